package spec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// want is one expected error: code, position and a message fragment.
type want struct {
	code      string
	line, col int // col 0: any column
	text      string
}

// readWants reads the "# want:" and "# want-also:" lines of a corpus file:
// CODE@LINE[:COL] fragment.
func readWants(t *testing.T, path string) (wants []want, library bool) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "# want: ")
		if !ok {
			rest, ok = strings.CutPrefix(line, "# want-also: ")
		}
		if !ok {
			continue
		}
		if strings.HasPrefix(rest, "none") {
			return nil, true
		}
		head, text, _ := strings.Cut(rest, " ")
		code, pos, _ := strings.Cut(head, "@")
		var w want
		w.code, w.text = code, text
		if _, err := fmt.Sscanf(pos, "%d:%d", &w.line, &w.col); err != nil {
			if _, err := fmt.Sscanf(pos, "%d", &w.line); err != nil {
				t.Fatalf("%s: bad want %q", path, line)
			}
		}
		wants = append(wants, w)
	}
	if len(wants) == 0 {
		t.Fatalf("%s: no # want: line", path)
	}
	return wants, false
}

func TestBrokenSpecs(t *testing.T) {
	files, _ := filepath.Glob("testdata/broken/*.yaml")
	cases := 0
	for _, path := range files {
		wants, library := readWants(t, path)
		if library {
			continue
		}
		cases++
		t.Run(filepath.Base(path), func(t *testing.T) {
			var errs Errors
			s, err := Load(path)
			if err == nil {
				_, err = s.Build(nil)
			}
			if !errors.As(err, &errs) {
				t.Fatalf("want coded errors, got %v", err)
			}
			if len(errs) != len(wants) {
				t.Errorf("%d errors, want %d:\n%v", len(errs), len(wants), errs)
			}
			for _, w := range wants {
				found := false
				for _, e := range errs {
					if e.Code == w.code && e.Line == w.line && (w.col == 0 || e.Col == w.col) && strings.Contains(e.Error(), w.text) && strings.HasPrefix(e.Error(), path+":") {
						found = true
					}
				}
				if !found {
					t.Errorf("no error %s at %d:%d containing %q; got:\n%v", w.code, w.line, w.col, w.text, errs)
				}
			}
		})
	}
	if cases < 30 {
		t.Errorf("the corpus has %d broken specs, want at least 30", cases)
	}
}
