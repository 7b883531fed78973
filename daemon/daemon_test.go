package daemon

import (
	"strings"
	"testing"
)

// TestNextGroupsSameAdapterJobs: the worker takes jobs sharing the applied
// adapter set first, up to GroupLimit in a row, then the oldest job.
func TestNextGroupsSameAdapterJobs(t *testing.T) {
	for _, c := range []struct {
		queue string // adapter set of each queued job, oldest first
		limit int
		want  string // order the worker runs them in
	}{
		{"ABABABA", 16, "AAAABBB"},
		{"ABABABA", 2, "AABBAAB"},
		{"BBAAB", 16, "BBBAA"}, // nothing applied: oldest first, then its group
		{"A", 1, "A"},
		{"", 4, ""},
	} {
		d := &Daemon{cfg: Config{GroupLimit: c.limit}}
		d.metrics = newMetrics(d)
		w := &warm{wake: make(chan struct{}, 1), quit: make(chan struct{})}
		for _, k := range c.queue {
			w.pending = append(w.pending, &Job{key: string(k)})
			d.queued++
		}
		var got strings.Builder
		for range len(c.queue) {
			j := d.next(w)
			if w.applied == nil || w.applied.key != j.key {
				w.applied, w.streak = &appliedSet{key: j.key}, 0 // what swap does
			}
			w.streak++
			got.WriteString(j.key)
		}
		if got.String() != c.want || d.queued != 0 {
			t.Errorf("queue %s, limit %d: ran %s (queued left %d), want %s", c.queue, c.limit, got.String(), d.queued, c.want)
		}
	}
}
