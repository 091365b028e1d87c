// Command tapfwd is the bare baseline the benchmarks compare tapminiport
// with: two TAPs joined by a plain read-then-write loop per direction,
// reused buffers, no shim, no pool, no indication. With --offload both TAPs
// use IFF_VNET_HDR and TUNSETOFFLOAD (checksum + TSO4/TSO6), so 64 KiB TCP
// frames cross as one read and one write, their virtio-net header passed
// through unchanged. With -pipeline each direction is a reader goroutine
// and a writer goroutine joined by a batched handoff (a ring of 4 batches,
// two channel operations per batch), so that reading and writing run on
// both cores at once: the experiment bench.sh measures against the plain
// loop. It runs until SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

func main() {
	a := flag.String("a", "tmfa0", "first TAP `name` (created when missing)")
	b := flag.String("b", "tmfb0", "second TAP `name` (created when missing)")
	offload := flag.Bool("offload", false, "IFF_VNET_HDR + TUNSETOFFLOAD csum|tso4|tso6 on both TAPs")
	pipeline = flag.Bool("pipeline", false, "a reader and a writer goroutine per direction with a batched handoff, instead of one read-then-write loop")
	up := flag.Bool("up", true, "set both links up (false: the caller moves them into namespaces and sets them up there)")
	flag.Parse()
	if err := run(*a, *b, *offload, *up); err != nil {
		fmt.Fprintf(os.Stderr, "tapfwd: %v\n", err)
		os.Exit(1)
	}
}

var pipeline *bool

func run(an, bn string, offload, up bool) error {
	if an == bn {
		return errors.New("-a and -b name the same TAP")
	}
	// Catch the stop signals before anything opens: a SIGTERM or SIGINT
	// sent during the open or right on "ready" then stops the forwarder
	// as one sent later does (exit 0), instead of killing it with the
	// default action (status 143, a failed contender to bench.sh).
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	opts := tapdev.Options{VnetHdr: offload}
	da, _, err := tapdev.OpenTAP(an, opts)
	if err != nil {
		return err
	}
	defer da.Close()
	db, _, err := tapdev.OpenTAP(bn, opts)
	if err != nil {
		return err
	}
	defer db.Close()
	if offload {
		for _, d := range []*tapdev.Dev{da, db} {
			if err := d.SetOffload(tapdev.BaseOffloads); err != nil {
				return err
			}
		}
	}
	for _, n := range []string{an, bn} {
		if !up {
			break
		}
		if err := tapdev.SetLinkUp("", n, true); err != nil {
			return err
		}
	}
	fmt.Printf("tapfwd: %s ⇄ %s (offload %v)\nready\n", an, bn, offload)
	var wg sync.WaitGroup
	wg.Add(2)
	fwd := forward
	if *pipeline {
		fwd = forwardPipelined
	}
	go func() { defer wg.Done(); fwd(da, db) }()
	go func() { defer wg.Done(); fwd(db, da) }()
	<-ctx.Done()
	da.Interrupt().Stop()
	db.Interrupt().Stop()
	wg.Wait()
	return nil
}

// forward is the read-then-write loop: wait until src is readable, read up
// to 64 frames into reused 64 KiB buffers, write them to dst.
func forward(src, dst *tapdev.Dev) {
	const batch = 64
	bufs := make([][]byte, batch)
	out := make([][]byte, batch)
	sizes := make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 65536+tapdev.VnetHdrLen)
	}
	pump(src, batch, func() (int, bool) {
		n, err := src.ReadBatch(bufs, sizes)
		for i := 0; i < n; i++ {
			out[i] = bufs[i][:sizes[i]]
		}
		if n > 0 {
			if _, werr := dst.WriteBatch(out[:n], nil); werr != nil {
				fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", dst.Name(), werr)
				if !errors.Is(werr, tapdev.ErrLinkDown) {
					return n, false
				}
				// A link not up yet (or set down) drops the batch;
				// the direction goes on.
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", src.Name(), err)
			return n, false
		}
		return n, true
	})
}

// pump waits on src's interrupt and, per wake-up, calls step until it
// reads fewer than batch frames (the fd is empty). It returns when the
// interrupt stops or step says to stop.
func pump(src *tapdev.Dev, batch int, step func() (n int, ok bool)) {
	intr := src.Interrupt()
	for {
		if err := intr.Wait(); err != nil {
			if !errors.Is(err, ndisshim.ErrInterruptStopped) {
				fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", src.Name(), err)
			}
			return
		}
		for {
			n, ok := step()
			if !ok {
				return
			}
			if n < batch {
				break
			}
		}
	}
}

// batchSlot is one batch in flight from the reader to the writer.
type batchSlot struct {
	bufs  [][]byte
	sizes []int
	out   [][]byte
	n     int
}

// forwardPipelined is forward split in two goroutines: the reader fills a
// free slot with a batch and hands it over; the writer writes it and hands
// the slot back. The reader stops (and closes full) when its interrupt
// stops; the writer ends when full is closed.
func forwardPipelined(src, dst *tapdev.Dev) {
	const batch, slots = 64, 4
	free := make(chan *batchSlot, slots)
	full := make(chan *batchSlot, slots)
	for i := 0; i < slots; i++ {
		s := &batchSlot{bufs: make([][]byte, batch), sizes: make([]int, batch), out: make([][]byte, batch)}
		for j := range s.bufs {
			s.bufs[j] = make([]byte, 65536+tapdev.VnetHdrLen)
		}
		free <- s
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range full {
			for i := 0; i < s.n; i++ {
				s.out[i] = s.bufs[i][:s.sizes[i]]
			}
			if _, err := dst.WriteBatch(s.out[:s.n], nil); err != nil {
				fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", dst.Name(), err)
			}
			free <- s
		}
	}()
	defer func() { close(full); <-done }()
	pump(src, batch, func() (int, bool) {
		s := <-free
		n, err := src.ReadBatch(s.bufs, s.sizes)
		s.n = n
		if n > 0 {
			full <- s
		} else {
			free <- s
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", src.Name(), err)
			return n, false
		}
		return n, true
	})
}
