package spec

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// codeConstants scans the spec package's source for its error codes: every
// string constant whose value starts with RFN-, so a new code cannot be
// added without the test seeing it.
func codeConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]string{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		{
			for _, d := range f.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok || g.Tok != token.CONST {
					continue
				}
				for _, s := range g.Specs {
					vs := s.(*ast.ValueSpec)
					for i, v := range vs.Values {
						lit, ok := v.(*ast.BasicLit)
						if !ok || lit.Kind != token.STRING {
							continue
						}
						val, _ := strconv.Unquote(lit.Value)
						if strings.HasPrefix(val, "RFN-") {
							codes[val] = vs.Names[i].Name
						}
					}
				}
			}
		}
	}
	if len(codes) < 20 {
		t.Fatalf("found only %d RFN- constants in the spec package: the scan is broken", len(codes))
	}
	return codes
}

// TestEveryCodeIsExplained: each code the package can emit has an entry
// with a cause, a fix and an example that really gets that code.
func TestEveryCodeIsExplained(t *testing.T) {
	codes := codeConstants(t)
	for code, name := range codes {
		e, ok := Explain(code)
		if !ok {
			t.Errorf("%s (%s) has no entry in the error index (spec/explain.go)", code, name)
			continue
		}
		if e.Title == "" || e.Cause == "" || e.Fix == "" || e.Example == "" {
			t.Errorf("%s: the entry lacks a title, cause, fix or example", code)
		}
		err := e.Run()
		if err == nil {
			t.Errorf("%s: the example builds without error", code)
			continue
		}
		es, ok := err.(Errors)
		if !ok || len(es) == 0 || es[0].Code != code {
			t.Errorf("%s: the example's first error is not %s:\n%v", code, code, err)
		}
	}
	seen := map[string]bool{}
	for _, e := range Explanations() {
		if _, ok := codes[e.Code]; !ok {
			t.Errorf("the index explains %s, which the package does not emit", e.Code)
		}
		if seen[e.Code] {
			t.Errorf("%s is explained twice", e.Code)
		}
		seen[e.Code] = true
	}
}

func TestExplainLookup(t *testing.T) {
	for _, c := range []struct {
		in, want string
	}{
		{"RFN-S012", "RFN-S012"}, {"rfn-s012", "RFN-S012"}, {"S12", "RFN-S012"}, {"12", "RFN-S012"}, {" S001 ", "RFN-S001"}, {"RFN-S999", ""}, {"X", ""},
	} {
		got := ""
		if e, ok := Explain(c.in); ok {
			got = e.Code
		}
		if got != c.want {
			t.Errorf("Explain(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	text := must(Explain("RFN-S012")).Text()
	for _, w := range []string{"RFN-S012: unknown argument", "kernal_size", "gets:", `example.yaml:3:47: RFN-S012 unknown argument "kernal_size" for Conv2d (did you mean kernel_size?)`, "Fix:"} {
		if !strings.Contains(text, w) {
			t.Errorf("explain RFN-S012: %q not in\n%s", w, text)
		}
	}
}

func must(e *Explanation, ok bool) *Explanation {
	if !ok {
		panic("no entry")
	}
	return e
}
