package rxpool

// A property test: random sequences of Get, GetLarge, MarkIndicated,
// Return, Recycle (good and bad, mixed chains, blocks of another pool)
// run against the pool and against a simple model (a state per block and a
// LIFO stack per class); after every step the states, the stacks' order
// (seen through Get), every counter and LowResources must agree.
//
// FuzzLedger runs the seed corpus as a normal test; `go test -fuzz
// FuzzLedger ./rxpool/` explores further. TestLedgerRandom feeds it
// pseudo-random programs so that plain `go test` covers long sequences.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

func FuzzLedger(f *testing.F) {
	f.Add([]byte{0, 5, 2, 3, 1, 0, 3, 2, 1, 0, 9})
	f.Add([]byte{0, 9, 2, 9, 0, 1, 2, 3, 4, 3, 9, 4, 1, 0, 0, 9, 1, 3})
	f.Add([]byte{1, 4, 2, 4, 3, 4, 5, 0, 5, 1, 6, 0, 7, 3, 8, 2})
	f.Add([]byte{0, 9, 0, 9, 0, 9, 0, 9, 2, 12, 3, 6, 5, 2, 4, 4, 9, 0})
	f.Add([]byte{0, 3, 4, 3, 4, 7, 1, 7, 6, 1, 2, 1, 5, 1, 3, 9, 8, 5})
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 4096 { // long programs add time, not coverage
			prog = prog[:4096]
		}
		runProgram(t, prog)
	})
}

func TestLedgerRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 60 {
		prog := make([]byte, 600)
		for j := range prog {
			prog[j] = byte(r.Uint32())
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { runProgram(t, prog) })
	}
}

// model is what the pool should be.
type model struct {
	state       []BlockState
	stack       [2][]int // free blocks per class, top last
	highWater   [2]int
	exhaustions [2]int64
	got, returned, recycled,
	doubleReturns, foreignReturns, neverIndicated, badRecycles, badMarks int64
}

const (
	mCount      = 9
	mLargeCount = 3
	mLowWater   = 3
)

func (m *model) class(i int) int {
	if i < mCount {
		return 0
	}
	return 1
}

func (m *model) inUse(c int) int {
	size := []int{mCount, mLargeCount}[c]
	return size - len(m.stack[c])
}

func (m *model) in(st BlockState) []int {
	var r []int
	for i, s := range m.state {
		if s == st {
			r = append(r, i)
		}
	}
	return r
}

func runProgram(t *testing.T, prog []byte) {
	e := newEnv(t)
	p := e.pool(Config{Name: "model", Count: mCount, BufferSize: 128, Headroom: 10, LargeCount: mLargeCount, LargeSize: 256, LowWater: mLowWater})
	other := e.pool(Config{Name: "other", Count: 2, BufferSize: 128})
	foreign := getN(t, other, 1)[0] // a filling block of another pool

	m := &model{state: make([]BlockState, mCount+mLargeCount)}
	for i := mCount - 1; i >= 0; i-- {
		m.stack[0] = append(m.stack[0], i)
	}
	for i := mCount + mLargeCount - 1; i >= mCount; i-- {
		m.stack[1] = append(m.stack[1], i)
	}
	pos := 0
	next := func() int {
		if pos >= len(prog) {
			return 0
		}
		pos++
		return int(prog[pos-1])
	}
	// pick takes up to n distinct blocks from set, in an order the program chooses.
	pick := func(set []int, n int) []int {
		set = slices.Clone(set)
		var r []int
		for ; n > 0 && len(set) > 0; n-- {
			j := next() % len(set)
			r = append(r, set[j])
			set = slices.Delete(set, j, j+1)
		}
		return r
	}
	nbls := func(idx []int) *ndisshim.NetBufferList {
		var c []*ndisshim.NetBufferList
		for _, i := range idx {
			c = append(c, p.all[i])
		}
		return chain(c...)
	}
	dst := make([]*ndisshim.NetBufferList, 12)

	for step := 0; pos < len(prog); step++ {
		op := next() % 10
		switch op {
		case 0, 1: // Get / GetLarge k
			c := op
			k := next() % 12
			var got int
			if c == 0 {
				got = p.Get(dst[:k])
			} else {
				got = p.GetLarge(dst[:k])
			}
			want := min(k, len(m.stack[c]))
			if k > 0 && want == 0 {
				m.exhaustions[c]++
			}
			if got != want {
				t.Fatalf("step %d: Get(%d) class %d = %d, model %d", step, k, c, got, want)
			}
			for j := range got {
				top := m.stack[c][len(m.stack[c])-1]
				m.stack[c] = m.stack[c][:len(m.stack[c])-1]
				if dst[j].Index() != top {
					t.Fatalf("step %d: Get gave block %d, model (LIFO) %d", step, dst[j].Index(), top)
				}
				m.state[top] = StateFilling
			}
			m.got += int64(got)
			m.highWater[c] = max(m.highWater[c], m.inUse(c))
		case 2: // MarkIndicated some filling blocks
			idx := pick(m.in(StateFilling), next()%6)
			if len(idx) == 0 {
				continue
			}
			p.MarkIndicated(nbls(idx))
			for _, i := range idx {
				m.state[i] = StateIndicated
			}
		case 3: // Return some indicated blocks (mixing indications, any order)
			idx := pick(m.in(StateIndicated), next()%8)
			if err := p.Return(nbls(idx)); err != nil {
				t.Fatalf("step %d: Return: %v", step, err)
			}
			m.putBack(idx, StateReturned)
			m.returned += int64(len(idx))
		case 4: // Recycle some filling or indicated blocks
			idx := pick(append(m.in(StateFilling), m.in(StateIndicated)...), next()%8)
			p.Recycle(nbls(idx))
			m.putBack(idx, StateFree)
			m.recycled += int64(len(idx))
		case 5, 6: // Return any blocks, maybe with a foreign one: the model predicts each refusal
			all := make([]int, len(m.state))
			for i := range all {
				all[i] = i
			}
			idx := pick(all, 1+next()%4)
			var good []int
			var kinds []error
			for _, i := range idx {
				switch m.state[i] {
				case StateIndicated:
					good = append(good, i)
				case StateFilling:
					m.neverIndicated++
					kinds = append(kinds, ErrNeverIndicated)
				default:
					m.doubleReturns++
					kinds = append(kinds, ErrDoubleReturn)
				}
			}
			head := nbls(idx)
			if op == 6 {
				foreign.Next = head
				head = foreign
				m.foreignReturns++
				kinds = append(kinds, ErrForeign)
			}
			err := p.Return(head)
			foreign.Next = nil
			m.putBack(good, StateReturned)
			m.returned += int64(len(good))
			var le *LedgerError
			if len(kinds) == 0 {
				if err != nil {
					t.Fatalf("step %d: Return: %v", step, err)
				}
			} else if !errors.As(err, &le) || le.Total != len(kinds) || le.Chain != len(kinds)+len(good) {
				t.Fatalf("step %d: Return of %v: %v, model refuses %d", step, idx, err, len(kinds))
			}
			for _, k := range kinds {
				if !errors.Is(err, k) {
					t.Fatalf("step %d: Return error %v is not %v", step, err, k)
				}
			}
		case 7: // Recycle a block that is not held
			idx := pick(append(m.in(StateFree), m.in(StateReturned)...), 1)
			if len(idx) == 0 {
				continue
			}
			p.Recycle(nbls(idx))
			m.badRecycles++
		case 8: // MarkIndicated a block that is not filling
			idx := pick(append(m.in(StateIndicated), m.in(StateReturned)...), 1)
			if len(idx) == 0 {
				continue
			}
			p.MarkIndicated(nbls(idx))
			m.badMarks++
		case 9: // LowResources
			if lr := p.LowResources(); lr != (len(m.stack[0]) <= mLowWater) {
				t.Fatalf("step %d: LowResources = %v with %d free", step, lr, len(m.stack[0]))
			}
		}
		m.check(t, step, p)
	}
	other.Recycle(foreign)
}

// putBack moves blocks to the free stacks, in chain order (the last is on top).
func (m *model) putBack(idx []int, st BlockState) {
	for _, i := range idx {
		m.state[i] = st
		c := m.class(i)
		m.stack[c] = append(m.stack[c], i)
	}
}

func (m *model) check(t *testing.T, step int, p *Pool) {
	t.Helper()
	for i, want := range m.state {
		if got, _ := p.State(p.all[i]); got != want {
			t.Fatalf("step %d: block %d is %s, model %s", step, i, got, want)
		}
	}
	ind := len(m.in(StateIndicated))
	want := Stats{
		Name: "model", Size: mCount, Free: len(m.stack[0]), InUse: m.inUse(0), HighWater: m.highWater[0], Exhaustions: m.exhaustions[0],
		Large:     ClassStats{Size: mLargeCount, Free: len(m.stack[1]), InUse: m.inUse(1), HighWater: m.highWater[1], Exhaustions: m.exhaustions[1]},
		Indicated: ind, Filling: len(m.in(StateFilling)),
		Got: m.got, Returned: m.returned, Recycled: m.recycled,
		DoubleReturns: m.doubleReturns, ForeignReturns: m.foreignReturns, NeverIndicated: m.neverIndicated,
		BadRecycles: m.badRecycles, BadMarks: m.badMarks,
	}
	if got := p.Stats(); got != want {
		t.Fatalf("step %d: stats\n got %+v\nwant %+v", step, got, want)
	}
	if h := p.Held(); h.Indicated != ind || h.Filling != want.Filling || h.Count != ind+want.Filling {
		t.Fatalf("step %d: Held %+v", step, h)
	}
}
