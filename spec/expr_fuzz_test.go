package spec

import (
	"math"
	"testing"
)

// FuzzExpr feeds arbitrary text to the expression evaluator (with
// parameters at int64's limits): it must return a number, a boolean or an
// error (overflow included), never panic, and give the same answer twice.
func FuzzExpr(f *testing.F) {
	for _, seed := range []string{
		"dim * 4", "dim // heads", "dim / heads", "(1 + 2) * 3", "-7 // 2", "-7 % 2", "7 % -2", "2 - -3",
		"eps * 2", "1_000 + 1", "dim == 768", "heads != 12", "dim >= heads", "on", "dim // 0", "(dim * 2",
		"big * 4", "min // -1", "-min", "max + 1", "1e308 * 10", "((((((((1))))))))", "--------1", "1.5e3 // 7",
		"n > 0", "index * 2 + 1", "dim % 0.5", "1 2", "", "()", "nope", "on + 1", "3037000499 * 3037000499",
	} {
		f.Add(seed)
	}
	vars := map[string]value{"dim": int64(768), "heads": int64(12), "eps": 1e-6, "on": true, "n": int64(3), "index": int64(0),
		"big": int64(4611686018427387905), "min": int64(math.MinInt64), "max": int64(math.MaxInt64)}
	get := func(n string) (value, bool) { v, ok := vars[n]; return v, ok }
	f.Fuzz(func(t *testing.T, src string) {
		if len(src) > 1000 {
			return // deep nesting is bounded by the YAML parser before this
		}
		v, err := evalExpr(src, get)
		again, err2 := evalExpr(src, get)
		if (err == nil) != (err2 == nil) || err == nil && v != again && !isNaN(v) {
			t.Fatalf("%q: %v (%v), then %v (%v)", src, v, err, again, err2)
		}
		if err != nil {
			return
		}
		switch v.(type) {
		case int64, bool, float64:
		default:
			t.Fatalf("%q = %v (%T): not a number or a boolean", src, v, v)
		}
	})
}

func isNaN(v value) bool {
	f, ok := v.(float64)
	return ok && f != f
}
