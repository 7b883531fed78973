package core

import (
	"fmt"
	"strings"
)

// printNode is one line of the tree print with its subtree.
type printNode struct {
	value     string
	className string
	children  []*printNode
	id        int // equal ids: equal subtrees (value, class and children)
}

// TreeOptions bound a tree print.
type TreeOptions struct {
	// Depth < 0 prints everything; otherwise chains deeper than Depth show
	// "...".
	Depth int
	// MaxLines > 0 stops the print after that many lines and ends it with
	// a line saying how many more there were.
	MaxLines int
}

// MaxIndent is the number of nesting levels a tree print draws guides for.
// Deeper lines start with their level ("[1234]") and the guides of the
// last MaxIndent levels only, so every line has a bounded width and a
// print is linear in the size of the tree.
const MaxIndent = 64

// Tree renders m as Refiners does: one line per module, chains tagged
// ((CHAIN), (RES), (SUM), ...), repeated sibling types numbered #1, #2, and
// runs of identical siblings folded into one line marked (xN). depth < 0
// prints everything; otherwise chains deeper than depth show "...".
func Tree(m Module, depth int) string {
	s, _ := TreeWith(m, TreeOptions{Depth: depth})
	return s
}

// TreeWith renders m like Tree, within o's bounds; it reports whether
// lines were left out because of MaxLines.
func TreeWith(m Module, o TreeOptions) (string, bool) {
	root := toPrintNode(m)
	ids := map[string]int{}
	intern(root, ids)
	foldIdentical(root)
	r := &treeRenderer{max: o.MaxLines}
	r.render(root, true, true, o.Depth)
	if r.dropped > 0 {
		fmt.Fprintf(&r.b, "\n... (%d more lines)", r.dropped)
	}
	return r.b.String(), r.dropped > 0
}

// String prints the whole tree.
func (c *Chain) String() string { return Tree(c, -1) }

func toPrintNode(m Module) *printNode {
	n := &printNode{className: TypeName(m)}
	if c, ok := m.(*Chain); ok {
		if c.typeName == "" && c.kind != Residual && c.kind != Matmul {
			n.value = "(" + c.Tag() + ")" // a plain structural chain shows only its tag
		} else {
			n.value = "(" + c.Tag() + ") " + c.Describe()
		}
		for _, ch := range c.children {
			n.children = append(n.children, toPrintNode(ch))
		}
		return n
	}
	n.value = Describe(m)
	if h, ok := m.(interface{ Submodules() []Module }); ok {
		for _, ch := range h.Submodules() {
			n.children = append(n.children, toPrintNode(ch))
		}
	}
	return n
}

// intern gives every subtree an id, equal for equal subtrees, bottom-up:
// comparing two siblings is then one integer comparison, not a walk.
func intern(n *printNode, ids map[string]int) {
	var key strings.Builder
	key.WriteString(n.value)
	key.WriteByte(0)
	key.WriteString(n.className)
	for _, ch := range n.children {
		intern(ch, ids)
		fmt.Fprintf(&key, "\x00%d", ch.id)
	}
	id, ok := ids[key.String()]
	if !ok {
		id = len(ids)
		ids[key.String()] = id
	}
	n.id = id
}

func foldIdentical(n *printNode) {
	var out []*printNode
	for i := 0; i < len(n.children); {
		j := i + 1
		for j < len(n.children) && n.children[i].id == n.children[j].id {
			j++
		}
		child := n.children[i]
		if j-i > 1 {
			child.value += fmt.Sprintf(" (x%d)", j-i)
		}
		foldIdentical(child)
		out = append(out, child)
		i = j
	}
	n.children = out
}

// treeRenderer writes lines; guides holds the indentation of each level
// ("│   " or "    "), so a line costs its own width, not its depth.
type treeRenderer struct {
	b       strings.Builder
	guides  []string
	lines   int
	max     int
	dropped int
}

func (r *treeRenderer) line(branch, value string) {
	if r.max > 0 && r.lines >= r.max {
		r.dropped++
		return
	}
	if r.lines > 0 {
		r.b.WriteByte('\n')
	}
	r.lines++
	g := r.guides
	if len(g) > MaxIndent {
		fmt.Fprintf(&r.b, "[%d] ", len(g))
		g = g[len(g)-MaxIndent:]
	}
	for _, s := range g {
		r.b.WriteString(s)
	}
	r.b.WriteString(branch)
	r.b.WriteString(value)
}

func (r *treeRenderer) render(n *printNode, isLast, isRoot bool, depth int) {
	branch := "├── "
	if isLast {
		branch = "└── "
	}
	if depth == 0 && len(n.children) > 0 {
		r.line(branch, n.value+" ...")
		return
	}
	if depth > 0 {
		depth--
	}
	if isRoot {
		r.line("", n.value)
	} else {
		r.line(branch, n.value)
	}
	guide := "│   "
	if isLast {
		guide = "    "
	}
	r.guides = append(r.guides, guide)
	defer func() { r.guides = r.guides[:len(r.guides)-1] }()
	counts := map[string]int{}
	for _, ch := range n.children {
		counts[ch.className]++
	}
	seen := map[string]int{}
	for i, ch := range n.children {
		seen[ch.className]++
		shown := *ch
		if counts[ch.className] > 1 {
			shown.value = fmt.Sprintf("%s #%d", ch.value, seen[ch.className])
		}
		r.render(&shown, i == len(n.children)-1, false, depth)
	}
}
