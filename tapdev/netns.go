package tapdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as by
// `ip netns add`.
const NetnsDir = "/run/netns"

func validNetnsName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("tapdev: bad netns name %q", name)
	}
	return nil
}

// where names a namespace in errors: "in netns \"x\"".
func where(ns string) string {
	return "in netns " + nsLabel(ns)
}

// nsLabel is ns quoted, or "(current)" for "".
func nsLabel(ns string) string {
	if ns == "" {
		return "(current)"
	}
	return fmt.Sprintf("%q", ns)
}

// CreateNetns creates the named network namespace, bind-mounted at
// NetnsDir/name exactly like `ip netns add` (NetnsDir made a shared mount
// point first, so the mount propagates to mount namespaces `ip netns exec`
// makes). Only lo exists in it, down. It is an error wrapping os.ErrExist
// if the name is taken.
func CreateNetns(name string) error {
	if err := validNetnsName(name); err != nil {
		return err
	}
	if err := prepareNetnsDir(); err != nil {
		return fmt.Errorf("tapdev: create netns %q: %w", name, err)
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("tapdev: create netns %q: %w", name, err) // os.ErrExist when taken
	}
	f.Close()
	err = onThrowawayThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		// Go back before the thread dies: a main thread is parked rather
		// than killed, and it must not pin the new namespace.
		defer netns.Set(orig)
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("tapdev: create netns %q: %w", name, err)
	}
	return nil
}

// prepareNetnsDir makes NetnsDir a shared mount point, as iproute2 does.
func prepareNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return err
	}
	made := false
	for {
		err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if err != unix.EINVAL || made {
			return fmt.Errorf("make %s shared: %w", NetnsDir, err)
		}
		if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", NetnsDir, err)
		}
		made = true
	}
}

// DeleteNetns unmounts and removes the named namespace, like
// `ip netns delete`. The namespace itself goes away (and the links in it
// are deleted or, for physical ones, returned) when nothing else holds it:
// a process in it, an open fd to it. It is an error wrapping os.ErrNotExist
// if there is no such name.
func DeleteNetns(name string) error {
	if err := validNetnsName(name); err != nil {
		return err
	}
	path := filepath.Join(NetnsDir, name)
	if _, err := os.Lstat(path); err != nil {
		return fmt.Errorf("tapdev: delete netns %q: %w", name, err)
	}
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && err != unix.EINVAL { // EINVAL: not mounted (a leftover file)
		return fmt.Errorf("tapdev: delete netns %q: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("tapdev: delete netns %q: %w", name, err)
	}
	return nil
}

// NetnsExists reports whether NetnsDir/name exists.
func NetnsExists(name string) bool {
	if validNetnsName(name) != nil {
		return false
	}
	_, err := os.Lstat(filepath.Join(NetnsDir, name))
	return err == nil
}

// OpenNetns returns a handle (an open fd) to the named namespace; "" is the
// current one. The caller closes it.
func OpenNetns(name string) (netns.NsHandle, error) {
	if name == "" {
		h, err := netns.Get()
		if err != nil {
			return h, fmt.Errorf("tapdev: open current netns: %w", err)
		}
		return h, nil
	}
	if err := validNetnsName(name); err != nil {
		return netns.None(), err
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return h, fmt.Errorf("tapdev: open netns %q: %w", name, err)
	}
	return h, nil
}

// handleAt returns a NETLINK_ROUTE handle whose socket lives in ns ("" =
// the current namespace). The caller closes it.
func handleAt(ns string) (*netlink.Handle, error) {
	if ns == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("tapdev: netlink: %w", err)
		}
		return h, nil
	}
	nsh, err := OpenNetns(ns)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("tapdev: netlink %s: %w", where(ns), err)
	}
	return h, nil
}

// onThrowawayThread runs fn on a new goroutine locked to its OS thread and
// never unlocked, so whatever fn does to the thread (setns, unshare) dies
// with it. fn should still restore the namespace it changed.
func onThrowawayThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the runtime discards the thread when this goroutine exits
		errc <- fn()
	}()
	return <-errc
}

// setNetns is netns.Set: a variable so that a test can make leaving a
// namespace fail.
var setNetns = netns.Set

// inNetns runs fn on a throwaway thread that is in namespace ns ("" runs
// fn on the caller's goroutine). Its error can be fn's success followed by
// a failure to leave ns: whatever fn opened is then still the caller's to
// close.
func inNetns(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	target, err := OpenNetns(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	return onThrowawayThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := setNetns(target); err != nil {
			return fmt.Errorf("tapdev: enter netns %q: %w", ns, err)
		}
		ferr := fn()
		if err := setNetns(orig); err != nil {
			return errors.Join(ferr, fmt.Errorf("tapdev: leave netns %q: %w", ns, err))
		}
		return ferr
	})
}
