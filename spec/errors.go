package spec

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Error codes are stable: tools and tests match on them.
const (
	CodeYAML          = "RFN-S001" // the file is not valid YAML
	CodeVersion       = "RFN-S002" // missing or unsupported `refiners:` version
	CodeUnknownKey    = "RFN-S003" // unknown key in the document, a block or a parameter
	CodeShape         = "RFN-S004" // a node has the wrong YAML shape (e.g. a list where a mapping is expected)
	CodeUnknownLayer  = "RFN-S010" // unknown layer type
	CodePluginMissing = "RFN-S011" // a namespaced layer type whose plugin is not installed
	CodeUnknownArg    = "RFN-S012" // unknown argument for a layer
	CodeArgType       = "RFN-S013" // argument of the wrong type
	CodeMissingArg    = "RFN-S014" // required argument missing
	CodeBadLayer      = "RFN-S015" // the layer rejected its arguments (e.g. not divisible)
	CodeChildren      = "RFN-S016" // children given to a layer that takes none, or missing
	CodeUnknownParam  = "RFN-S020" // an expression names an unknown parameter
	CodeExpr          = "RFN-S021" // an expression does not parse or evaluate
	CodeDuplicate     = "RFN-S030" // a block or parameter defined twice
	CodeImport        = "RFN-S031" // an import cannot be read, or imports form a cycle
	CodeRepeat        = "RFN-S040" // repeat is not a non-negative integer
	CodeOverride      = "RFN-S041" // an override names an unknown parameter or has a bad value
	CodeRecursion     = "RFN-S042" // a block instantiates itself with the same parameters: it never ends
	CodeWeightMissing = "RFN-S050" // plan: a parameter has no tensor in the weights
	CodeWeightShape   = "RFN-S051" // plan: a tensor has the wrong shape or dtype
	CodeWeightExtra   = "RFN-S052" // plan: the weights hold a tensor the model does not use
)

// Error is one problem in a spec, at a position.
type Error struct {
	File      string
	Line, Col int
	Code      string
	Msg       string
	Plugin    string // with CodePluginMissing: the plugin that provides the type
	// Uses are, for a problem inside a block, the block uses it happened
	// in, one line each: "Block at file:line:col (params)", nested uses
	// joined innermost first. A problem met in several uses of a block is
	// one Error listing each of them.
	Uses []string
}

// MissingPlugins lists the plugins whose layer types a build could not
// find, so a caller can load their libraries and build again.
func MissingPlugins(err error) []string {
	es, ok := err.(Errors)
	if !ok {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range es {
		if e.Code == CodePluginMissing && !seen[e.Plugin] {
			seen[e.Plugin] = true
			out = append(out, e.Plugin)
		}
	}
	return out
}

func (e *Error) Error() string {
	var s string
	if e.Line == 0 {
		s = fmt.Sprintf("%s: %s %s", e.File, e.Code, e.Msg)
	} else {
		s = fmt.Sprintf("%s:%d:%d: %s %s", e.File, e.Line, e.Col, e.Code, e.Msg)
	}
	for _, u := range e.Uses {
		s += "\n    in " + u
	}
	return s
}

// Errors are all the problems found in one pass, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sorted orders the errors by position and merges those that are the same
// problem at the same place (a block used several times), keeping each
// use.
func (es Errors) sorted() Errors {
	type at struct {
		file      string
		line, col int
		code, msg string
	}
	first := map[at]*Error{}
	merged := es[:0]
	for _, e := range es {
		k := at{e.File, e.Line, e.Col, e.Code, e.Msg}
		if prev, dup := first[k]; dup {
			for _, u := range e.Uses {
				if !slices.Contains(prev.Uses, u) {
					prev.Uses = append(prev.Uses, u)
				}
			}
			continue
		}
		first[k] = e
		merged = append(merged, e)
	}
	es = merged
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	return es
}

// Suggest returns " (did you mean X?)" for the candidate closest to word,
// if one is close, else "": the hint spec errors end with.
func Suggest(word string, candidates []string) string { return suggest(word, candidates) }

// suggest returns " (did you mean X?)" for the closest candidate, if close.
func suggest(word string, candidates []string) string {
	best, bestD := "", len(word)/2+2
	for _, c := range candidates {
		if d := distance(strings.ToLower(word), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// distance is the Levenshtein edit distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
