package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/spec"
)

// fmtVerb formats spec files as gofmt formats Go: to stdout, or in place
// (-w), listing the files that change (-l), or as a diff (-d).
func fmtVerb(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("fmt", flag.ContinueOnError)
	write := fs.Bool("w", false, "write the result to the file instead of stdout (atomically)")
	list := fs.Bool("l", false, "list the files whose formatting differs")
	diff := fs.Bool("d", false, "print a diff of the changes instead of the result")
	files, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("fmt: which spec? (refinersd fmt [-w|-l|-d] SPEC...)")
	}
	var failed []error
	for _, path := range files {
		src, err := os.ReadFile(path)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		got, err := spec.Format(path, src)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		changed := !bytes.Equal(src, got)
		if *list && changed {
			fmt.Fprintln(out, path)
		}
		if *diff && changed {
			fmt.Fprint(out, unifiedDiff(path, string(src), string(got)))
		}
		if *write && changed {
			st, err := os.Stat(path)
			if err != nil {
				failed = append(failed, err)
				continue
			}
			if err := atomicfile.WriteFile(path, got, st.Mode().Perm()); err != nil {
				failed = append(failed, err)
			}
		}
		if !*list && !*diff && !*write {
			out.Write(got)
		}
	}
	return errors.Join(failed...)
}

// unifiedDiff is a unified diff (3 lines of context) of two texts, from a
// longest common subsequence of their lines: spec files are small.
func unifiedDiff(name, before, after string) string {
	x, y := splitLines(before), splitLines(after)
	// lcs[i][j]: length of the LCS of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte // ' ', '-', '+'
		line string
		i, j int // line numbers (from 0) in x and y before this op
	}
	var ops []op
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ops = append(ops, op{' ', x[i], i, j})
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', x[i], i, j}) // deletions first, as diff prints them
			i++
		default:
			ops = append(ops, op{'+', y[j], i, j})
			j++
		}
	}
	const context = 3
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s\n+++ %s (formatted)\n", name, name)
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		start := max(k-context, 0)
		end := k
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run-end > 2*context || run == len(ops) {
				end = min(end+context, len(ops))
				break
			}
			end = run
		}
		na, nb := 0, 0
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				na++
			}
			if o.kind != '-' {
				nb++
			}
		}
		fmt.Fprintf(&b, "@@ -%d,%d +%d,%d @@\n", ops[start].i+1, na, ops[start].j+1, nb)
		for _, o := range ops[start:end] {
			fmt.Fprintf(&b, "%c%s\n", o.kind, o.line)
		}
		k = end
	}
	return b.String()
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
