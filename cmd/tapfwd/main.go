// Command tapfwd is the bare baseline the benchmarks compare tapminiport
// with: two TAPs joined by a plain read-then-write loop per direction,
// reused buffers, no shim, no pool, no indication. With --offload both TAPs
// use IFF_VNET_HDR and TUNSETOFFLOAD (checksum + TSO4/TSO6), so 64 KiB TCP
// frames cross as one read and one write, their virtio-net header passed
// through unchanged. It runs until SIGTERM or SIGINT.
package main

import (
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
	up := flag.Bool("up", true, "set both links up (false: the caller moves them into namespaces and sets them up there)")
	flag.Parse()
	if err := run(*a, *b, *offload, *up); err != nil {
		fmt.Fprintf(os.Stderr, "tapfwd: %v\n", err)
		os.Exit(1)
	}
}

func run(an, bn string, offload, up bool) error {
	if an == bn {
		return errors.New("-a and -b name the same TAP")
	}
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
			if err := d.SetOffload(tapdev.OffloadCsum | tapdev.OffloadTSO4 | tapdev.OffloadTSO6); err != nil {
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
	go func() { defer wg.Done(); forward(da, db) }()
	go func() { defer wg.Done(); forward(db, da) }()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
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
	intr := src.Interrupt()
	for {
		if err := intr.Wait(); err != nil {
			if !errors.Is(err, ndisshim.ErrInterruptStopped) {
				fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", src.Name(), err)
			}
			return
		}
		for {
			n, err := src.ReadBatch(bufs, sizes)
			for i := 0; i < n; i++ {
				out[i] = bufs[i][:sizes[i]]
			}
			if n > 0 {
				if _, werr := dst.WriteBatch(out[:n]); werr != nil {
					fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", dst.Name(), werr)
					return
				}
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "tapfwd: %s: %v\n", src.Name(), err)
				return
			}
			if n < batch {
				break
			}
		}
	}
}
