package spec

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Format prints a spec in canonical form (`refinersd fmt`): keys in a
// fixed order (refiners, name, description, unwrap, kind, args, provider, imports,
// params, blocks, layers; a block's: description, kind, params, args,
// provider, layers), two-space indentation, a layer's `layers:` after its
// other arguments, argumentless layers as bare names (`- ReLU`, not
// `- ReLU:` or `- ReLU: {}`), strings quoted only where YAML needs it and
// then with double quotes (so an expression inside a flow collection reads
// "${dim * 4}"), one blank line between block definitions and none
// elsewhere. Like gofmt with line breaks, it keeps the writer's choice of
// flow ({a: 1}) or block style for a collection, except that a flow
// collection with a comment inside becomes block style so the comment
// keeps its place. Comments are kept. Format(Format(x)) == Format(x), and
// the formatted spec builds the same model. path names the file in errors.
func Format(path string, src []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		line := 0
		fmt.Sscanf(strings.TrimPrefix(err.Error(), "yaml: "), "line %d:", &line)
		return nil, Errors{{File: path, Line: line, Col: 1, Code: CodeYAML, Msg: err.Error()}}
	}
	if len(doc.Content) == 0 {
		return nil, Errors{{File: path, Code: CodeVersion, Msg: "empty spec: nothing to format"}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, Errors{{File: path, Line: root.Line, Col: root.Column, Code: CodeShape, Msg: "a spec is a mapping with refiners, params, blocks and layers"}}
	}
	canonDoc(root)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("%s: format: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("%s: format: %w", path, err)
	}
	out := rewrapFolded(b.Bytes())
	return spaceBlocks(out), nil
}

// foldedHeader ends a line that opens a folded scalar (`key: >`, `- >-`).
var foldedHeader = regexp.MustCompile(`(^|: |- )>-?$`)

// foldWidth is the width folded text is wrapped to.
const foldWidth = 80

// rewrapFolded wraps the folded scalars (`description: >`) the encoder
// wrote on one line at foldWidth columns, as a writer would: in folded
// style a line break between words reads as the space it replaces, so the
// value is unchanged. Text with double spaces or line breaks of its own is
// left as written, and so is the blank line the encoder may add after it
// unless the scalar clips or strips its trailing newlines.
func rewrapFolded(src []byte) []byte {
	lines := strings.Split(string(src), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		out = append(out, line)
		if !foldedHeader.MatchString(line) || i+1 >= len(lines) {
			continue
		}
		content := lines[i+1]
		text := strings.TrimLeft(content, " ")
		indent := len(content) - len(text)
		next := func(j int) string {
			if j < len(lines) {
				return lines[j]
			}
			return ""
		}
		// One line of text, then the end of the scalar: a line indented
		// less, or a blank line and then such a line.
		ends := func(l string) bool { return len(l)-len(strings.TrimLeft(l, " ")) < indent || l == "" }
		single := indent > 0 && text != "" && ends(next(i+2)) && (next(i+2) != "" || ends(next(i+3)) && next(i+3) != "" || i+3 >= len(lines)-1)
		if !single || strings.Contains(text, "  ") || len(content) <= foldWidth {
			continue
		}
		var cur string
		for _, w := range strings.Split(text, " ") {
			if cur != "" && indent+len([]rune(cur))+1+len([]rune(w)) > foldWidth {
				out = append(out, strings.Repeat(" ", indent)+cur)
				cur = ""
			}
			if cur != "" {
				cur += " "
			}
			cur += w
		}
		out = append(out, strings.Repeat(" ", indent)+cur)
		i++
		if next(i+1) == "" && i+2 < len(lines)-1 {
			i++ // the encoder's blank line: clipped or stripped anyway
		}
	}
	return []byte(strings.Join(out, "\n"))
}

// spaceBlocks puts one blank line before each block definition but the
// first (before its comments, if any).
func spaceBlocks(src []byte) []byte {
	var doc yaml.Node
	if yaml.Unmarshal(src, &doc) != nil || len(doc.Content) == 0 {
		return src
	}
	before := map[int]bool{}
	eachPair(doc.Content[0], func(k, v *yaml.Node) {
		if k.Value != "blocks" || v.Kind != yaml.MappingNode || v.Style == yaml.FlowStyle {
			return
		}
		for i := 2; i < len(v.Content); i += 2 {
			key := v.Content[i]
			line := key.Line
			if key.HeadComment != "" {
				line -= strings.Count(key.HeadComment, "\n") + 1
			}
			before[line] = true
		}
	})
	if len(before) == 0 {
		return src
	}
	lines := strings.Split(string(src), "\n")
	var out []string
	for i, l := range lines {
		if before[i+1] {
			out = append(out, "")
		}
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
}

var (
	docOrder   = []string{"refiners", "name", "description", "unwrap", "kind", "args", "provider", "imports", "params", "blocks", "layers"}
	blockOrder = []string{"description", "kind", "params", "args", "provider", "layers"}
)

// canonDoc formats the document's mapping (or an imported library's).
func canonDoc(m *yaml.Node) {
	reorder(m, docOrder)
	eachPair(m, func(k, v *yaml.Node) {
		switch k.Value {
		case "params":
			canonParams(v)
		case "imports":
			blockIfComments(v)
			scalars(v, false)
		case "blocks":
			canonBlocks(v)
		case "layers":
			canonItems(v)
		default:
			scalars(v, false)
		}
	})
}

func canonBlocks(m *yaml.Node) {
	if m.Kind != yaml.MappingNode {
		return
	}
	m.Style = 0
	eachPair(m, func(_, b *yaml.Node) {
		if b.Kind != yaml.MappingNode {
			return
		}
		b.Style = 0
		reorder(b, blockOrder)
		eachPair(b, func(k, v *yaml.Node) {
			switch k.Value {
			case "params":
				canonParams(v)
			case "layers":
				canonItems(v)
			default:
				scalars(v, false)
			}
		})
	})
}

// canonParams: one parameter per line, `name: default` or
// `name: {default: ..., doc: ...}`.
func canonParams(m *yaml.Node) {
	if m.Kind != yaml.MappingNode {
		return
	}
	blockIfComments(m)
	eachPair(m, func(_, v *yaml.Node) {
		if v.Kind == yaml.MappingNode {
			reorder(v, []string{"default", "doc"})
			blockIfComments(v)
		}
	})
	scalars(m, false)
}

// canonItems formats a list of layer items.
func canonItems(list *yaml.Node) {
	if list.Kind != yaml.SequenceNode {
		return
	}
	for i, it := range list.Content {
		list.Content[i] = canonItem(it)
	}
	blockIfComments(list)
	if list.Style == yaml.FlowStyle && !allBare(list) {
		list.Style = 0 // items with arguments or children, one per line
	}
	scalars(list, false)
}

// canonItem formats one layer item: `Type`, `Type: {args}`,
// `Type: [children]` or `Type: {args..., layers: [...]}`.
func canonItem(it *yaml.Node) *yaml.Node {
	if it.Kind == yaml.ScalarNode {
		scalars(it, false)
		return it
	}
	if it.Kind != yaml.MappingNode || len(it.Content) != 2 {
		return it
	}
	it.Style = 0
	k, v := it.Content[0], it.Content[1]
	scalars(k, false)
	switch {
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null" && v.Anchor == "" ||
		v.Kind == yaml.MappingNode && len(v.Content) == 0 && v.Anchor == "":
		// `Type:` and `Type: {}` are the bare `Type`; the comments move to it.
		bare := *k
		bare.HeadComment = joinComments(it.HeadComment, k.HeadComment)
		bare.LineComment = joinComments(k.LineComment, v.LineComment)
		bare.FootComment = joinComments(it.FootComment, k.FootComment, v.FootComment)
		return &bare
	case v.Kind == yaml.SequenceNode:
		canonItems(v)
	case v.Kind == yaml.MappingNode:
		canonArgs(v)
	}
	return it
}

// canonArgs formats a layer's arguments: `layers` (children) last and in
// block style, nested layer items (a GLU's activation) as items.
func canonArgs(m *yaml.Node) {
	var children *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "layers" {
			children = m.Content[i+1]
			m.Content = append(append(m.Content[:i:i], m.Content[i+2:]...), m.Content[i], m.Content[i+1])
			break
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch v := m.Content[i+1]; {
		case v == children:
			canonItems(v)
		case v.Kind == yaml.SequenceNode:
			blockIfComments(v)
		case v.Kind == yaml.MappingNode && len(v.Content) == 2:
			m.Content[i+1] = canonItem(v) // a nested layer (GLU's activation)
		}
	}
	blockIfComments(m)
	if children != nil {
		m.Style = 0
	}
	scalars(m, false)
}

// reorder sorts a mapping's pairs: the keys of order first, in that
// order, then the others as they were.
func reorder(m *yaml.Node, order []string) {
	rank := func(key string) int {
		if i := slices.Index(order, key); i >= 0 {
			return i
		}
		return len(order)
	}
	type pair struct{ k, v *yaml.Node }
	pairs := make([]pair, 0, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		pairs = append(pairs, pair{m.Content[i], m.Content[i+1]})
	}
	slices.SortStableFunc(pairs, func(a, b pair) int { return rank(a.k.Value) - rank(b.k.Value) })
	for i, p := range pairs {
		m.Content[2*i], m.Content[2*i+1] = p.k, p.v
	}
}

func eachPair(m *yaml.Node, f func(k, v *yaml.Node)) {
	if m.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		f(m.Content[i], m.Content[i+1])
	}
}

// blockIfComments puts a flow collection with a comment inside in block
// style, where each comment has a line of its own.
func blockIfComments(n *yaml.Node) {
	if n.Style == yaml.FlowStyle && hasComments(n) {
		n.Style = 0
	}
}

func allBare(list *yaml.Node) bool {
	for _, c := range list.Content {
		if c.Kind != yaml.ScalarNode {
			return false
		}
	}
	return len(list.Content) > 0
}

// hasComments reports whether a node below n carries a comment (n's own
// comments stay with n whatever its style).
func hasComments(n *yaml.Node) bool {
	for _, c := range n.Content {
		if c.HeadComment != "" || c.LineComment != "" || c.FootComment != "" || hasComments(c) {
			return true
		}
	}
	return false
}

func joinComments(cs ...string) string {
	var out []string
	for _, c := range cs {
		if c != "" {
			out = append(out, c)
		}
	}
	return strings.Join(out, "\n")
}

// scalars sets the quoting of the string scalars in n (and below, in
// collections): plain where YAML reads it back as the same string, in
// this context (flow: inside a flow collection), else double quotes.
// Other scalars (numbers, booleans, null) are written plain.
func scalars(n *yaml.Node, flow bool) {
	switch n.Kind {
	case yaml.ScalarNode:
		switch {
		case n.Tag == "!!null":
			n.Style, n.Value = 0, "null" // `x:`, `x: ~` and `x: null` alike
		case n.Tag != "!!str" && n.Tag != "":
			n.Style = 0
		case n.Style == yaml.LiteralStyle || n.Style == yaml.FoldedStyle || strings.Contains(n.Value, "\n"):
			// A multi-line text stays as written (a literal if it was
			// quoted), unless that style does not round-trip (leading
			// spaces or blank lines need indicators the encoder does not
			// keep stable): then it is quoted, exactly.
			if n.Style != yaml.FoldedStyle || !stableBlock(n) {
				n.Style = yaml.LiteralStyle
			}
			if !stableBlock(n) {
				n.Style = yaml.DoubleQuotedStyle
			}
		case plainOK(n.Value, flow):
			n.Style = 0
		default:
			n.Style = yaml.DoubleQuotedStyle
		}
	case yaml.SequenceNode, yaml.MappingNode:
		inner := flow || n.Style == yaml.FlowStyle
		for _, c := range n.Content {
			scalars(c, inner)
		}
	}
}

// stableBlock reports whether a block scalar reads back as itself and
// prints the same the second time.
func stableBlock(n *yaml.Node) bool {
	one := func(v *yaml.Node) (string, bool) {
		doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: "k"}, v}}
		var b bytes.Buffer
		enc := yaml.NewEncoder(&b)
		enc.SetIndent(2)
		if enc.Encode(doc) != nil || enc.Close() != nil {
			return "", false
		}
		return b.String(), true
	}
	c := *n
	c.HeadComment, c.LineComment, c.FootComment, c.Anchor = "", "", "", ""
	first, ok := one(&c)
	if !ok {
		return false
	}
	var back yaml.Node
	if yaml.Unmarshal([]byte(first), &back) != nil || len(back.Content) == 0 || len(back.Content[0].Content) != 2 {
		return false
	}
	v := back.Content[0].Content[1]
	if v.Value != n.Value {
		return false
	}
	v.Style = c.Style
	second, ok := one(v)
	return ok && second == first
}

// plainOK reports whether s can be written unquoted and read back as the
// string s: conservative, a string it refuses is quoted.
func plainOK(s string, flow bool) bool {
	if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, "\t\r\n") {
		return false
	}
	if strings.ContainsRune("-?:,[]{}#&*!|>'\"%@`", rune(s[0])) {
		return false
	}
	if strings.Contains(s, ": ") || strings.Contains(s, " #") || strings.HasSuffix(s, ":") {
		return false
	}
	if flow && strings.ContainsAny(s, ",[]{}") {
		return false
	}
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return false
	}
	got, isStr := v.(string)
	return isStr && got == s
}
