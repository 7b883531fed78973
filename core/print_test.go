package core

import (
	"strings"
	"testing"
)

// deepChain nests depth chains, each holding an Identity and the next.
func deepChain(depth int) *Chain {
	c := NewChain(NewIdentity())
	for range depth - 1 {
		c = NewChain(NewIdentity(), c)
	}
	return c
}

func TestTreePrintIsLinearInTheTreeSize(t *testing.T) {
	for _, depth := range []int{10, 1000, 5000} {
		got := Tree(deepChain(depth), -1)
		lines := strings.Split(got, "\n")
		if len(lines) != 2*depth {
			t.Fatalf("depth %d: %d lines, want %d", depth, len(lines), 2*depth)
		}
		widest := 0
		for _, l := range lines {
			widest = max(widest, len(l))
		}
		// A guide is 4 characters of up to 3 bytes, plus the level and
		// the layer's description.
		if limit := (MaxIndent+1)*4*3 + 40; widest > limit {
			t.Errorf("depth %d: widest line has %d bytes, want at most %d", depth, widest, limit)
		}
		if depth > MaxIndent {
			deepest := lines[len(lines)-1]
			if !strings.HasPrefix(deepest, "[") || !strings.HasSuffix(deepest, "└── Identity()") {
				t.Errorf("depth %d: deepest line (%d bytes) starts %q, not with its level", depth, len(deepest), deepest[:min(len(deepest), 20)])
			}
		}
	}
}

func TestTreeWithMaxLines(t *testing.T) {
	got, truncated := TreeWith(deepChain(100), TreeOptions{Depth: -1, MaxLines: 10})
	lines := strings.Split(got, "\n")
	if !truncated || len(lines) != 11 || lines[10] != "... (190 more lines)" {
		t.Errorf("truncated=%v, %d lines, want 10 and a count of the rest", truncated, len(lines))
	}
	full, truncated := TreeWith(deepChain(3), TreeOptions{Depth: -1, MaxLines: 10})
	if truncated || full != Tree(deepChain(3), -1) {
		t.Errorf("a tree within the limit changed: truncated=%v\n%s", truncated, full)
	}
}
