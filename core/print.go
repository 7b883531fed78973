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
}

func (n *printNode) equal(o *printNode) bool {
	if n.value != o.value || n.className != o.className || len(n.children) != len(o.children) {
		return false
	}
	for i := range n.children {
		if !n.children[i].equal(o.children[i]) {
			return false
		}
	}
	return true
}

// Tree renders m as Refiners does: one line per module, chains tagged
// ((CHAIN), (RES), (SUM), ...), repeated sibling types numbered #1, #2, and
// runs of identical siblings folded into one line marked (xN). depth < 0
// prints everything; otherwise chains deeper than depth show "...".
func Tree(m Module, depth int) string {
	root := toPrintNode(m)
	foldIdentical(root)
	var lines []string
	renderTree(root, "", true, true, depth, &lines)
	return strings.Join(lines, "\n")
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

func foldIdentical(n *printNode) {
	var out []*printNode
	for i := 0; i < len(n.children); {
		j := i + 1
		for j < len(n.children) && n.children[i].equal(n.children[j]) {
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

func renderTree(n *printNode, prefix string, isLast, isRoot bool, depth int, lines *[]string) {
	branch := "├── "
	if isLast {
		branch = "└── "
	}
	if depth == 0 && len(n.children) > 0 {
		*lines = append(*lines, prefix+branch+n.value+" ...")
		return
	}
	if depth > 0 {
		depth--
	}
	icon := branch
	if isRoot {
		icon = ""
	}
	*lines = append(*lines, prefix+icon+n.value)
	childPrefix := prefix + "│   "
	if isLast {
		childPrefix = prefix + "    "
	}
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
		renderTree(&shown, childPrefix, i == len(n.children)-1, false, depth, lines)
	}
}
