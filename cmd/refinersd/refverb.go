package main

import (
	"bytes"
	"errors"
	"flag"
	"io"

	"github.com/refiners-go/refiners/internal/atomicfile"
)

// referenceVerb is the shape of the reference verbs (layers, explain):
// with no argument they list the entries, with arguments they print each
// in full, with --markdown the whole reference as Markdown (the file in
// docs/ that go generate ./cmd/refinersd writes); --output writes to a
// file, atomically, instead of the terminal.
type referenceVerb struct {
	name  string // the verb
	whole string // what --markdown prints: "reference", "index"
	doc   string // the Markdown file it is
	arg   string // what an argument names: "NAME", "CODE"

	markdown func(w io.Writer)
	list     func(w io.Writer)
	entry    func(w io.Writer, arg string) error // an unknown arg is an error
}

func (v referenceVerb) run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet(v.name, flag.ContinueOnError)
	markdown := fs.Bool("markdown", false, "the whole "+v.whole+" as Markdown ("+v.doc+")")
	output := fs.String("output", "", "write to this file (atomically) instead of the terminal")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	switch {
	case *markdown:
		if len(pos) > 0 {
			return errors.New(v.name + " --markdown: the whole " + v.whole + ", no " + v.arg)
		}
		v.markdown(&b)
	case len(pos) == 0:
		v.list(&b)
	default:
		for i, arg := range pos {
			if i > 0 {
				b.WriteString("\n")
			}
			if err := v.entry(&b, arg); err != nil {
				return err
			}
		}
	}
	if *output != "" {
		return atomicfile.WriteFile(*output, b.Bytes(), 0o644)
	}
	_, err = out.Write(b.Bytes())
	return err
}
