package ndisshim

// SetTestHookRestartOpened sets the seam Restart runs between opening the
// data path and publishing Running, until the returned restore is called.
func SetTestHookRestartOpened(f func(*Adapter)) (restore func()) {
	old := testHookRestartOpened
	testHookRestartOpened = f
	return func() { testHookRestartOpened = old }
}
