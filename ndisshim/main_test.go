package ndisshim_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain proves that no goroutine the shim starts (interrupt loops, timer
// handlers, watchdog waits) outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
