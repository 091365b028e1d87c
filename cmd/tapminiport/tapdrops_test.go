package main

import (
	"errors"
	"strings"
	"testing"
)

// queueDrops.text gives the drops between the two samples, and says why
// when there is no figure: a run that lost a TAP must not report 0.
func TestQueueDropsText(t *testing.T) {
	gone := errors.New("link not found")
	for _, c := range []struct {
		name string
		q    queueDrops
		want string
	}{
		{"both samples", queueDrops{from: 7, to: 1007, haveFrom: true, have: true}, "1000"},
		{"none dropped", queueDrops{from: 3, to: 3, haveFrom: true, have: true}, "0"},
		{"gone before the halt", queueDrops{from: 3, haveFrom: true, err: gone}, "? (gone before the halt)"},
		{"not read at ready", queueDrops{to: 5, have: true, err: gone}, "? (not read at ready: link not found)"},
		{"counters reset", queueDrops{from: 9, to: 2, haveFrom: true, have: true}, "? (the link's counters were reset)"},
		{"halt never sampled", queueDrops{from: 9, haveFrom: true}, "? (not sampled at the halt)"},
	} {
		if got := c.q.text(); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// A TAP missing at ready gives "?" with the netlink error, not a figure.
func TestQueueDropsSampleMissingTAP(t *testing.T) {
	var m machine
	m.o = &options{hwTap: "tmnosuch0", nicTap: "tmnosuch1"}
	m.sampleHardwareDrops(true)
	m.sampleNICDrops(true)
	line := m.queueDropsLine()
	for _, want := range []string{"hardware tmnosuch0=? (not read at ready:", "NIC tmnosuch1=? (not read at ready:"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
}
