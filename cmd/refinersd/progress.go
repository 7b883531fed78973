package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// progressBar shows denoising progress: a redrawn bar on a terminal, one
// plain line per step otherwise (logs, pipes).
type progressBar struct {
	w        io.Writer
	terminal bool
	quiet    bool
	drawn    bool
}

func newProgressBar(w io.Writer, terminal, quiet bool) *progressBar {
	return &progressBar{w: w, terminal: terminal, quiet: quiet}
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressLine is "step i/N, r it/s, ETA d": the rate over the steps done.
func progressLine(p pipeline.Progress) string {
	rate := float64(p.Step) / p.Elapsed.Seconds()
	eta := time.Duration(float64(p.Steps-p.Step) / rate * float64(time.Second)).Round(time.Second)
	if p.Elapsed <= 0 {
		rate, eta = 0, 0
	}
	return fmt.Sprintf("step %d/%d, %.2f it/s, ETA %s", p.Step, p.Steps, rate, eta)
}

func (b *progressBar) update(p pipeline.Progress) {
	if b.quiet {
		return
	}
	if !b.terminal {
		fmt.Fprintln(b.w, progressLine(p))
		return
	}
	const width = 30
	full := width * p.Step / p.Steps
	bar := strings.Repeat("=", full) + strings.Repeat(" ", width-full)
	fmt.Fprintf(b.w, "\r[%s] %s\x1b[K", bar, progressLine(p))
	b.drawn = true
}

// done ends the bar's line on a terminal.
func (b *progressBar) done() {
	if b.drawn {
		fmt.Fprintln(b.w)
		b.drawn = false
	}
}
