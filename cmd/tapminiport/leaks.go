package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// leftovers lists what the run still has after unload: goroutines running
// code of this module (other than the caller's) and file descriptors
// other than stdin, stdout and stderr. A clean halt leaves neither.
func leftovers() []string {
	var out []string
	// Goroutines end a little after they are joined; give them a moment.
	for i := 0; i < 50; i++ {
		if out = leakedGoroutines(); len(out) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return append(out, leakedFDs()...)
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 { // the caller's own goroutine comes first
			continue
		}
		s := string(g)
		if !strings.Contains(s, "github.com/tapminiport/tapminiport/") {
			continue
		}
		if strings.Contains(s, "main.(*machine).stop.func") { // the signal watcher, ending now
			continue
		}
		head, _, _ := strings.Cut(s, "\n")
		fn := ""
		for _, l := range strings.Split(s, "\n") {
			if strings.Contains(l, "github.com/tapminiport/tapminiport/") && !strings.HasPrefix(l, "\t") {
				fn = l
				break
			}
		}
		out = append(out, fmt.Sprintf("goroutine %s in %s", strings.TrimSuffix(strings.TrimPrefix(head, "goroutine "), ":"), fn))
	}
	return out
}

// openFDs maps each open descriptor above stderr to what it points at.
func openFDs() map[int]string {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return map[int]string{-1: "cannot list /proc/self/fd: " + err.Error()}
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	self := int(d.Fd())
	fds := map[int]string{}
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd <= 2 || fd == self {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + n)
		fds[fd] = target
	}
	return fds
}

// fdBaseline is taken at start, once the runtime's poller is up (its
// epoll and eventfd descriptors are the runtime's, not the run's).
var fdBaseline map[int]string

func takeFDBaseline() {
	if r, w, err := os.Pipe(); err == nil { // starts the netpoller
		r.Close()
		w.Close()
	}
	fdBaseline = openFDs()
}

func leakedFDs() []string {
	var out []string
	for fd, target := range openFDs() {
		if base, ok := fdBaseline[fd]; ok && base == target {
			continue
		}
		out = append(out, fmt.Sprintf("fd %d → %s", fd, target))
	}
	return out
}
