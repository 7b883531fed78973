package clip

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizer reproduces what Refiners 0.4.0 does to a prompt before
// byte-pair encoding, with Python 3's Unicode semantics:
//
//   - str.lower(), a full lowercase mapping: U+0130 (İ) becomes "i" + U+0307
//     (two runes); everything else maps rune to rune, as unicode.ToLower does.
//     Python's final-sigma rule picks ς or σ, both letters that are dropped
//     below, so it needs no code here.
//   - then re.findall of the pattern
//     <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\s\w]+
//     with IGNORECASE. Python tries the alternatives in that order at each
//     position (the first that matches wins, not the longest) and skips one
//     character where none matches. Under IGNORECASE Python also lets the
//     dotless ı (U+0131) and the long ſ (U+017F) match [a-zA-Z], and ſ match
//     the literal "s"; those are the only non-ASCII characters that survive
//     lowering and match an ASCII letter.
//   - \w and \s are Python's Unicode classes (RE2's are ASCII only), so a
//     non-ASCII letter or digit is neither [a-zA-Z] nor [^\s\w]: it is
//     dropped. Whitespace only separates pieces, so Refiners' \s+ → " "
//     folding changes nothing and is not done.
//
// The conformance test sweeps every code point against Python 3.11
// (Unicode 14.0); Go's unicode tables may be newer, so characters assigned
// after 14.0 can be classified differently (Python then keeps their bytes).

// class is how the pattern treats one (lowered) rune.
type class uint8

const (
	skip   class = iota // \s or \w but not [a-zA-Z0-9]: separates pieces, dropped
	letter              // [a-zA-Z] under IGNORECASE: a-z, ı, ſ
	digit               // [0-9]: one piece per digit
	other               // [^\s\w]: runs of these form one piece
)

// asciiClass is classOf for the ASCII range, the common case.
var asciiClass = func() (t [128]class) {
	for r := range rune(128) {
		t[r] = classOfSlow(r)
	}
	return t
}()

func classOf(r rune) class {
	if r < 128 {
		return asciiClass[r]
	}
	return classOfSlow(r)
}

func classOfSlow(r rune) class {
	switch {
	case 'a' <= r && r <= 'z', r == 'ı', r == 'ſ':
		return letter
	case '0' <= r && r <= '9':
		return digit
	case isPythonSpace(r), isPythonWord(r):
		return skip
	}
	return other
}

// isPythonSpace is Python's str.isspace: the White_Space property plus the
// four information separators U+001C–U+001F (bidirectional class B or S).
func isPythonSpace(r rune) bool {
	if 0x1c <= r && r <= 0x1f {
		return true
	}
	return unicode.IsSpace(r)
}

// isPythonWord is Python's \w for str patterns: str.isalnum() or '_'. In
// Python's tables every alphanumeric character is a letter (L*) or a number
// (N*), which the conformance sweep checks.
func isPythonWord(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r)
}

// lower appends Python's str.lower() of text to dst, as runes.
func lower(dst []rune, text string) []rune {
	for _, r := range text {
		if r == 'İ' {
			dst = append(dst, 'i', '\u0307')
			continue
		}
		dst = append(dst, unicode.ToLower(r))
	}
	return dst
}

var (
	specials     = []string{"<|startoftext|>", "<|endoftext|>"}
	contractions = []string{"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}
)

// matchLiteral reports whether rs starts with the ASCII literal lit under
// Python's IGNORECASE on lowered text: the same runes, except that ſ
// matches "s".
func matchLiteral(rs []rune, lit string) bool {
	if len(rs) < len(lit) {
		return false
	}
	for i := 0; i < len(lit); i++ {
		if r := rs[i]; r != rune(lit[i]) && !(lit[i] == 's' && r == 'ſ') {
			return false
		}
	}
	return true
}

// matchAt returns the length in runes of the pattern's match at rs[0], or 0
// when no alternative matches there.
func matchAt(rs []rune) int {
	for _, lit := range specials {
		if matchLiteral(rs, lit) {
			return len(lit)
		}
	}
	if rs[0] == '\'' {
		for _, lit := range contractions {
			if matchLiteral(rs, lit) {
				return len(lit)
			}
		}
	}
	switch c := classOf(rs[0]); c {
	case digit:
		return 1
	case letter, other:
		n := 1
		for n < len(rs) && classOf(rs[n]) == c {
			n++
		}
		return n
	}
	return 0
}

// pretokenize calls emit with the UTF-8 bytes of each piece of text, in
// order. The slice passed to emit is reused between calls.
func pretokenize(text string, emit func(piece []byte)) {
	rs := lower(make([]rune, 0, len(text)), text)
	var buf []byte
	for i := 0; i < len(rs); {
		n := matchAt(rs[i:])
		if n == 0 {
			i++
			continue
		}
		buf = buf[:0]
		for _, r := range rs[i : i+n] {
			buf = utf8.AppendRune(buf, r)
		}
		emit(buf)
		i += n
	}
}
