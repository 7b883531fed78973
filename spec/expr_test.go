package spec

import (
	"math"
	"strings"
	"testing"
)

func TestExpressions(t *testing.T) {
	vars := map[string]value{"dim": int64(768), "heads": int64(12), "eps": 1e-6, "on": true,
		"big": int64(4611686018427387905), "min": int64(math.MinInt64), "max": int64(math.MaxInt64)}
	get := func(n string) (value, bool) { v, ok := vars[n]; return v, ok }
	cases := []struct {
		src  string
		want value
		err  string
	}{
		{"dim * 4", int64(3072), ""},
		{"dim // heads", int64(64), ""},
		{"dim / heads", 64.0, ""}, // / is true division
		{"1 + 2 * 3", int64(7), ""},
		{"(1 + 2) * 3", int64(9), ""},
		{"-7 // 2", int64(-4), ""}, // floor, as Python
		{"-7 % 2", int64(1), ""},
		{"7 % -2", int64(-1), ""},
		{"2 - -3", int64(5), ""},
		{"eps * 2", 2e-6, ""}, // doubling is exact in float64
		{"1_000 + 1", int64(1001), ""},
		{"dim == 768", true, ""},
		{"heads != 12", false, ""},
		{"dim >= heads", true, ""},
		{"on", true, ""},
		{"dim // 0", nil, "division by zero"},
		{"dim % 0", nil, "division by zero"},
		{"(dim * 2", nil, "missing )"},
		{"dim *", nil, "ends early"},
		{"dim 4", nil, `unexpected "4"`},
		{"nope + 1", nil, `unknown parameter "nope"`},
		{"on + 1", nil, "operands must be numbers"},
		{"1.2.3", nil, "bad number"},
		{"big * 4", nil, "integer overflow in 4611686018427387905 * 4"},
		{"big + big", nil, "integer overflow"},
		{"-big - big - 2", nil, "integer overflow"},
		{"-big - (big - 2)", int64(math.MinInt64), ""},
		{"min - 1", nil, "integer overflow"},
		{"-min", nil, "integer overflow"},
		{"min * -1", nil, "integer overflow"},
		{"-1 * min", nil, "integer overflow"},
		{"min // -1", nil, "integer overflow"},
		{"min % -1", int64(0), ""},
		{"max + 1", nil, "integer overflow"},
		{"max * 1", int64(9223372036854775807), ""},
		{"4294967296 * 4294967296", nil, "integer overflow"},
		{"3037000500 * -3037000500", nil, "integer overflow"},
		{"3037000499 * 3037000499", int64(9223372030926249001), ""},
	}
	for _, c := range cases {
		got, err := evalExpr(c.src, get)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one containing %q", c.src, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q = %v (%T), %v; want %v (%T)", c.src, got, got, err, c.want, c.want)
		}
	}
}
