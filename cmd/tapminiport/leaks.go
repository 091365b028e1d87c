package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// leftovers lists what the run still has after unload: goroutines running
// code of this module or of package main (other than the caller's and the
// two goroutines of stop that wait for it, see goroutineLeaks) and file
// descriptors other than stdin, stdout and stderr. A clean halt leaves
// neither.
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

// leakedGoroutines lists the run's goroutines still alive (see
// goroutineLeaks), one "goroutine N in function(args)" each.
func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return goroutineLeaks(string(buf))
}

// modulePath prefixes the functions of this module's packages; under go
// test, package main's too ("github.com/tapminiport/tapminiport/cmd/tapminiport.run").
const modulePath = "github.com/tapminiport/tapminiport/"

// mainPkg prefixes package main's functions in the built binary, with or
// without -trimpath ("main.run"). Without -trimpath its files print as
// absolute paths ("/work/main/cmd/tapminiport/observe.go:155"), so the
// stack of a goroutine living in package main need not contain modulePath.
const mainPkg = "main."

// goroutineLeaks reads a runtime.Stack(buf, true) dump taken by leftovers
// and lists the goroutines of the run. A goroutine is the run's when one
// of its functions, or the function whose go statement created it, is in
// this module or in package main. Not counted:
//   - the first goroutine: the caller, the halt goroutine stop starts;
//   - the goroutine waiting in stop's select for that halt's result
//     (goroutine 1: main.main → run → stop);
//   - stop's signal watcher, (*machine).stop.func1 in stop.go: it waits
//     for stop to close done, which stop does once the halt has returned;
//   - go test's own main.main, in the generated _testmain.go.
//
// Only those: another closure of stop, or stop's goroutine anywhere but in
// its own select, counts. If stop.go gains a closure before the watcher,
// the watcher becomes func2 and is reported here, loudly, not hidden.
func goroutineLeaks(dump string) []string {
	var out []string
	for i, g := range strings.Split(strings.TrimSpace(dump), "\n\n") {
		if i == 0 { // the caller's own goroutine comes first
			continue
		}
		head, body, _ := strings.Cut(g, "\n")
		frames, createdBy := stackFrames(body)
		first := -1 // the first of the run's frames
		for j, f := range frames {
			if runFunc(f) {
				first = j
				break
			}
		}
		if first < 0 && !runFunc(frame{fn: createdBy}) {
			continue
		}
		if waitsInStop(frames) || isStopWatcher(frames) {
			continue
		}
		id := strings.TrimPrefix(head, "goroutine ")
		id, _, _ = strings.Cut(id, " ")
		where := ""
		switch {
		case first >= 0:
			where = frames[first].line
		case len(frames) > 0:
			where = frames[0].line + ", created by " + createdBy
		default:
			where = "a goroutine created by " + createdBy
		}
		out = append(out, fmt.Sprintf("goroutine %s in %s", id, where))
	}
	return out
}

// frame is one function of a goroutine's stack: the line as printed
// ("main.(*machine).stop(0xc0001a2000, ...)"), the function without its
// arguments, and its file:line.
type frame struct{ line, fn, file string }

// stackFrames parses the lines after a goroutine's header: each function
// line is followed by a tab-indented file:line; "created by F in goroutine
// N" ends the stack.
func stackFrames(body string) (frames []frame, createdBy string) {
	lines := strings.Split(body, "\n")
	for k := 0; k < len(lines); k++ {
		l := lines[k]
		if l == "" || strings.HasPrefix(l, "\t") {
			continue
		}
		if c, ok := strings.CutPrefix(l, "created by "); ok {
			createdBy, _, _ = strings.Cut(c, " in goroutine ")
			continue
		}
		f := frame{line: l, fn: l}
		if p := strings.LastIndexByte(l, '('); p > 0 && strings.HasSuffix(l, ")") {
			f.fn = l[:p]
		}
		if k+1 < len(lines) && strings.HasPrefix(lines[k+1], "\t") {
			f.file = strings.TrimPrefix(lines[k+1], "\t")
		}
		frames = append(frames, f)
	}
	return frames, createdBy
}

// runFunc says whether f is in this module or in package main, other than
// the test harness's main.main.
func runFunc(f frame) bool {
	if strings.HasPrefix(f.file, "_testmain.go:") {
		return false
	}
	return strings.HasPrefix(f.fn, modulePath) || strings.HasPrefix(f.fn, mainPkg)
}

// mainFunc gives the name of f within package main, under either naming:
// "(*machine).stop" for main.(*machine).stop and for
// github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop.
func mainFunc(f frame) string {
	if n, ok := strings.CutPrefix(f.fn, mainPkg); ok {
		return n
	}
	if n, ok := strings.CutPrefix(f.fn, modulePath+"cmd/tapminiport."); ok {
		return n
	}
	return ""
}

// waitsInStop: the innermost function, runtime's aside, is stop itself.
func waitsInStop(frames []frame) bool {
	for _, f := range frames {
		if !strings.HasPrefix(f.fn, "runtime.") {
			return mainFunc(f) == "(*machine).stop"
		}
	}
	return false
}

// isStopWatcher: the goroutine's own function is stop's first closure,
// the signal watcher.
func isStopWatcher(frames []frame) bool {
	return len(frames) > 0 && mainFunc(frames[len(frames)-1]) == "(*machine).stop.func1"
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
