package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/refiners-go/refiners/convert"
)

// runConvert measures `refinersd convert` on a full SD 1.5 single-file
// checkpoint: wall time and peak RSS (VmHWM) of each run against the size
// of the largest component the source holds (the U-Net). The target is a
// peak below 1.2x that component: the converter streams one tensor at a
// time from the mapped source and lets its pages go once written. Each run
// resets the peak first (/proc/self/clear_refs), so a run's peak is its own
// plus what the process holds anyway (libtorch's code, the Go runtime).
func runConvert(src string, dtypes []string, limit float64) (bool, error) {
	dir, err := os.MkdirTemp("", "refiners-convert-bench-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("refiners-bench convert: %s\n\n", src)
	fmt.Printf("  %-10s %9s %12s %12s %12s %7s  %s\n", "dtype", "time", "peak RSS", "largest", "written", "ratio", "verdict")
	pass := true
	for i, dt := range dtypes {
		o := convert.Options{DType: dt}
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			return false, fmt.Errorf("resetting the peak RSS: %w", err)
		}
		start := time.Now()
		s, err := convert.Open(src, o)
		if err != nil {
			return false, err
		}
		d, err := convert.Detect(s, o)
		if err != nil {
			s.Close()
			return false, err
		}
		var largest int64
		for _, f := range d.Found {
			largest = max(largest, f.SourceBytes())
		}
		out := filepath.Join(dir, "run"+strconv.Itoa(i))
		if err := os.MkdirAll(out, 0o755); err != nil {
			return false, err
		}
		paths, err := convert.OutputPaths(d, out)
		if err != nil {
			return false, err
		}
		written, err := convert.Convert(context.Background(), d, paths, o)
		s.Close()
		if err != nil {
			return false, err
		}
		took := time.Since(start)
		peak, err := statusKB("VmHWM")
		if err != nil {
			return false, err
		}
		var total int64
		for _, w := range written {
			st, err := os.Stat(w.Path)
			if err != nil {
				return false, err
			}
			total += st.Size()
			os.Remove(w.Path)
		}
		ratio := float64(peak*1024) / float64(largest)
		verdict := "ok"
		if ratio >= limit {
			verdict, pass = "OVER", false
		}
		name := dt
		if name == "" {
			name = "(source)"
		}
		fmt.Printf("  %-10s %8.1fs %10.0f MB %10.0f MB %10.0f MB %7.3f  %s\n", name, took.Seconds(),
			float64(peak)/1024, float64(largest)/(1<<20), float64(total)/(1<<20), ratio, verdict)
	}
	fmt.Printf("\npeak RSS below %.2fx the largest component: %v\n", limit, pass)
	return pass, nil
}

// statusKB reads a "kB" field of /proc/self/status.
func statusKB(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", field)
}
