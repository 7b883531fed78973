package spec

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// Expressions: a value written "${...}" is evaluated against the spec's
// parameters. The language is small on purpose: numbers, parameter names,
// + - * / // % (integer division and remainder on integers), unary minus,
// parentheses, and comparisons (== != < <= > >=) giving booleans. Integers
// stay integers unless an operand is a float or / is used.

// value is an evaluated expression: int64, float64, bool or string.
type value = any

type exprParser struct {
	src  string
	pos  int
	vars func(name string) (value, bool)
}

// evalExpr evaluates src. Errors carry the offset inside src.
func evalExpr(src string, vars func(string) (value, bool)) (value, error) {
	p := &exprParser{src: src, vars: vars}
	v, err := p.comparison()
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos < len(p.src) {
		return nil, fmt.Errorf("unexpected %q at offset %d in %q", p.src[p.pos:], p.pos, src)
	}
	return v, nil
}

func (p *exprParser) space() {
	for p.pos < len(p.src) && p.src[p.pos] == ' ' {
		p.pos++
	}
}

func (p *exprParser) peek(ops ...string) string {
	p.space()
	for _, op := range ops {
		if strings.HasPrefix(p.src[p.pos:], op) {
			return op
		}
	}
	return ""
}

func (p *exprParser) comparison() (value, error) {
	l, err := p.sum()
	if err != nil {
		return nil, err
	}
	op := p.peek("==", "!=", "<=", ">=", "<", ">")
	if op == "" {
		return l, nil
	}
	p.pos += len(op)
	r, err := p.sum()
	if err != nil {
		return nil, err
	}
	a, b, err := numbers(l, r, op)
	if err != nil {
		return nil, err
	}
	switch op {
	case "==":
		return a == b, nil
	case "!=":
		return a != b, nil
	case "<":
		return a < b, nil
	case "<=":
		return a <= b, nil
	case ">":
		return a > b, nil
	}
	return a >= b, nil
}

func (p *exprParser) sum() (value, error) {
	l, err := p.product()
	if err != nil {
		return nil, err
	}
	for {
		op := p.peek("+", "-")
		if op == "" {
			return l, nil
		}
		p.pos++
		r, err := p.product()
		if err != nil {
			return nil, err
		}
		if l, err = arith(l, r, op); err != nil {
			return nil, err
		}
	}
}

func (p *exprParser) product() (value, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		op := p.peek("//", "*", "/", "%")
		if op == "" {
			return l, nil
		}
		p.pos += len(op)
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		if l, err = arith(l, r, op); err != nil {
			return nil, err
		}
	}
}

func (p *exprParser) unary() (value, error) {
	if p.peek("-") != "" {
		p.pos++
		v, err := p.unary()
		if err != nil {
			return nil, err
		}
		return arith(int64(0), v, "-")
	}
	return p.atom()
}

func (p *exprParser) atom() (value, error) {
	p.space()
	if p.pos >= len(p.src) {
		return nil, fmt.Errorf("expression %q ends early", p.src)
	}
	c := rune(p.src[p.pos])
	switch {
	case c == '(':
		p.pos++
		v, err := p.comparison()
		if err != nil {
			return nil, err
		}
		if p.peek(")") == "" {
			return nil, fmt.Errorf("missing ) in %q", p.src)
		}
		p.pos++
		return v, nil
	case unicode.IsDigit(c) || c == '.':
		start := p.pos
		for p.pos < len(p.src) && (unicode.IsDigit(rune(p.src[p.pos])) || strings.ContainsRune(".eE_", rune(p.src[p.pos]))) {
			p.pos++
		}
		lit := strings.ReplaceAll(p.src[start:p.pos], "_", "")
		if i, err := strconv.ParseInt(lit, 10, 64); err == nil {
			return i, nil
		}
		f, err := strconv.ParseFloat(lit, 64)
		if err != nil {
			return nil, fmt.Errorf("bad number %q in %q", lit, p.src)
		}
		return f, nil
	case unicode.IsLetter(c) || c == '_':
		start := p.pos
		for p.pos < len(p.src) && (unicode.IsLetter(rune(p.src[p.pos])) || unicode.IsDigit(rune(p.src[p.pos])) || p.src[p.pos] == '_') {
			p.pos++
		}
		name := p.src[start:p.pos]
		switch name {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		v, ok := p.vars(name)
		if !ok {
			return nil, &unknownParam{name: name}
		}
		return v, nil
	}
	return nil, fmt.Errorf("unexpected %q in %q", string(c), p.src)
}

// unknownParam is an expression naming a parameter that does not exist.
type unknownParam struct{ name string }

func (e *unknownParam) Error() string { return fmt.Sprintf("unknown parameter %q", e.name) }

func numbers(a, b value, op string) (float64, float64, error) {
	fa, ok1 := toFloat(a)
	fb, ok2 := toFloat(b)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("%v %s %v: operands must be numbers", a, op, b)
	}
	return fa, fb, nil
}

func toFloat(v value) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// errOverflow is an integer result that int64 cannot hold: an error, not
// a silently wrapped size.
type errOverflow struct{ expr string }

func (e errOverflow) Error() string { return "integer overflow in " + e.expr }

// checked computes l op r on integers, reporting overflow.
func checked(l, r int64, op string) (int64, bool) {
	switch op {
	case "+":
		s := l + r
		return s, (s > l) == (r > 0)
	case "-":
		s := l - r
		return s, (s < l) == (r > 0)
	case "*":
		if l == 0 || r == 0 {
			return 0, true
		}
		p := l * r
		return p, p/r == l && !(l == -1 && r == math.MinInt64) && !(r == -1 && l == math.MinInt64)
	}
	return 0, false
}

// errDivZero is division by zero in an expression.
type errDivZero struct{ expr string }

func (e errDivZero) Error() string { return "division by zero in " + e.expr }

func arith(l, r value, op string) (value, error) {
	li, lInt := l.(int64)
	ri, rInt := r.(int64)
	if lInt && rInt && op != "/" {
		switch op {
		case "+", "-", "*":
			v, ok := checked(li, ri, op)
			if !ok {
				return nil, errOverflow{fmt.Sprintf("%d %s %d", li, op, ri)}
			}
			return v, nil
		case "//", "%":
			if ri == 0 {
				return nil, errDivZero{fmt.Sprintf("%d %s %d", li, op, ri)}
			}
			if li == math.MinInt64 && ri == -1 {
				if op == "%" {
					return int64(0), nil
				}
				return nil, errOverflow{fmt.Sprintf("%d %s %d", li, op, ri)}
			}
			q, m := li/ri, li%ri
			if m != 0 && (m < 0) != (ri < 0) { // floor, as Python
				q--
				m += ri
			}
			if op == "//" {
				return q, nil
			}
			return m, nil
		}
	}
	a, b, err := numbers(l, r, op)
	if err != nil {
		return nil, err
	}
	switch op {
	case "+":
		return a + b, nil
	case "-":
		return a - b, nil
	case "*":
		return a * b, nil
	case "/", "//", "%":
		if b == 0 {
			return nil, errDivZero{fmt.Sprintf("%v %s %v", l, op, r)}
		}
		switch op {
		case "/":
			return a / b, nil
		case "//":
			return math.Floor(a / b), nil
		}
		return a - b*math.Floor(a/b), nil
	}
	return nil, fmt.Errorf("unknown operator %s", op)
}
