package torchfile

import (
	"errors"
	"fmt"
	"strconv"
)

// Named is a tensor and its dotted path in the decoded object.
type Named struct {
	Key    string
	Tensor *Tensor
}

// Leaf is a value other than a tensor found by Flatten: a number, a
// string, None, bytes, a record of an inert class.
type Leaf struct {
	Key   string
	Value any
}

// maxDepth bounds Flatten's recursion: no state dict nests deeper.
const maxDepth = 64

// maxVisits bounds Flatten's work: a pickle can share one container many
// times over (a = [x, x]; b = [a, a]; ...), a tree of 2^depth paths.
const maxVisits = 1 << 22

// Flatten walks the dicts, lists and tuples under v, in order, and returns
// the tensors under their dotted paths (a state dict's own keys at the top
// level; list and tuple items by index) and the other leaves. Empty
// containers contribute nothing. It fails on a key that is not a string or
// an integer, on two paths that collide, on containers nested too
// deeply (a pickle can build cycles) and on more than maxVisits values.
func Flatten(v any) ([]Named, []Leaf, error) {
	fl := &flattener{seen: map[string]bool{}}
	if err := fl.walk("", v, 0); err != nil {
		return nil, nil, err
	}
	return fl.tensors, fl.leaves, nil
}

type flattener struct {
	tensors []Named
	leaves  []Leaf
	seen    map[string]bool
	visits  int
}

func (fl *flattener) walk(prefix string, v any, depth int) error {
	if fl.visits++; fl.visits > maxVisits {
		return fmt.Errorf("torchfile: more than %d values (containers shared over and over?)", maxVisits)
	}
	if depth > maxDepth {
		return fmt.Errorf("torchfile: %s: containers nested more than %d deep (a cycle?)", prefix, maxDepth)
	}
	join := func(k string) string {
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	switch x := v.(type) {
	case *Dict:
		var err error
		x.Entries(func(k, val any) bool {
			var name string
			switch kk := k.(type) {
			case string:
				name = kk
			case int64:
				name = strconv.FormatInt(kk, 10)
			case Class:
				name = kk.String()
			default:
				err = fmt.Errorf("torchfile: %s: dict key of type %s", orRoot(prefix), typeName(k))
				return false
			}
			err = fl.walk(join(name), val, depth+1)
			return err == nil
		})
		return err
	case *List:
		return fl.items(prefix, x.Items, depth, join)
	case Tuple:
		return fl.items(prefix, x, depth, join)
	case *Tensor:
		if prefix == "" {
			return errors.New("torchfile: the file holds a single tensor, not a dict of them")
		}
		if fl.seen[prefix] {
			return fmt.Errorf("torchfile: two tensors under the path %s", prefix)
		}
		fl.seen[prefix] = true
		fl.tensors = append(fl.tensors, Named{prefix, x})
		return nil
	}
	fl.leaves = append(fl.leaves, Leaf{orRoot(prefix), v})
	return nil
}

func (fl *flattener) items(prefix string, items []any, depth int, join func(string) string) error {
	for i, it := range items {
		if err := fl.walk(join(strconv.Itoa(i)), it, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func orRoot(p string) string {
	if p == "" {
		return "(root)"
	}
	return p
}
