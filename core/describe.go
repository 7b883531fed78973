package core

import (
	"fmt"
	"strings"
)

// describe formats "Name(k1=v1, k2=v2)" from alternating keys and values,
// the way Refiners prints a module's constructor arguments.
func describe(name string, kv ...any) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('(')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%v=%s", kv[i], formatArg(kv[i+1]))
	}
	b.WriteByte(')')
	return b.String()
}

func formatArg(v any) string {
	switch x := v.(type) {
	case bool:
		if x {
			return "True"
		}
		return "False"
	case []int64:
		parts := make([]string, len(x))
		for i, d := range x {
			parts[i] = fmt.Sprint(d)
		}
		if len(parts) == 1 {
			return "(" + parts[0] + ",)"
		}
		return "(" + strings.Join(parts, ", ") + ")"
	case [2]int64:
		return fmt.Sprintf("(%d, %d)", x[0], x[1])
	case float64:
		s := fmt.Sprint(x)
		if !strings.ContainsAny(s, ".e") {
			s += ".0"
		}
		return s
	}
	return fmt.Sprint(v)
}

// weighted appends the device and dtype of a module's first parameter, as
// Refiners prints weighted modules.
func weighted(base string, p Param) string {
	device, dtype := "cpu", p.DType.String()
	if p.Value != nil && (*p.Value).Valid() {
		device = (*p.Value).Device().String()
		dtype = (*p.Value).DType().String()
	}
	return strings.TrimSuffix(base, ")") + fmt.Sprintf(", device=%s, dtype=%s)", device, dtype)
}

// FormatShape writes a shape as [2, 3, 4].
func FormatShape(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
