package torchfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The values a pickle decodes to. Nothing else can come out of it: the
// unpickler never builds an arbitrary class, it only hands a class's module
// and name to the caller's resolver, which answers with one of these or an
// error.

// Dict is a Python dict or collections.OrderedDict, keys in insertion order.
// Keys are strings, integers (int64), booleans, nil or tuples of those.
type Dict struct {
	keys   []any
	values []any
	index  map[any]int
	// Attrs holds the attributes a pickle set on the dict with BUILD, as
	// PyTorch does with a state dict's _metadata; nil when there are none.
	Attrs *Dict
}

// NewDict makes an empty Dict.
func NewDict() *Dict { return &Dict{index: map[any]int{}} }

// Len is the number of entries.
func (d *Dict) Len() int { return len(d.keys) }

// Keys returns the keys in insertion order.
func (d *Dict) Keys() []any { return slices.Clone(d.keys) }

// Get returns the value under key.
func (d *Dict) Get(key any) (any, bool) {
	k, ok := hashable(key)
	if !ok {
		return nil, false
	}
	i, ok := d.index[k]
	if !ok {
		return nil, false
	}
	return d.values[i], true
}

// Entries calls fn for each entry in insertion order until it returns false.
func (d *Dict) Entries(fn func(key, value any) bool) {
	for i, k := range d.keys {
		if !fn(k, d.values[i]) {
			return
		}
	}
}

// set inserts or replaces an entry; a key replaced keeps its place, as in
// Python.
func (d *Dict) set(key, value any) error {
	k, ok := hashable(key)
	if !ok {
		return fmt.Errorf("dict key of type %s is not supported", typeName(key))
	}
	if i, ok := d.index[k]; ok {
		d.values[i] = value
		return nil
	}
	d.index[k] = len(d.keys)
	d.keys = append(d.keys, key)
	d.values = append(d.values, value)
	return nil
}

// tupleKey is the comparable form of a tuple used as a dict key.
type tupleKey string

// hashable returns the comparable form of a key, or false for a value
// Python could not use as a key either (a list, a dict, a tensor).
func hashable(k any) (any, bool) { return hashableDepth(k, 0) }

// maxKeyDepth bounds tuples nested in dict keys (a hostile pickle could
// nest them as deep as it is long).
const maxKeyDepth = 8

func hashableDepth(k any, depth int) (any, bool) {
	if depth > maxKeyDepth {
		return nil, false
	}
	switch v := k.(type) {
	case nil, bool, int64, float64, string:
		return v, true
	case *big.Int:
		return "int:" + v.String(), true
	case []byte:
		return "bytes:" + string(v), true
	case Class:
		return "class:" + v.String(), true
	case Tuple:
		var b strings.Builder
		for _, e := range v {
			h, ok := hashableDepth(e, depth+1)
			if !ok {
				return nil, false
			}
			fmt.Fprintf(&b, "%T:%v\x00", h, h)
		}
		return tupleKey(b.String()), true
	}
	return nil, false
}

// Tuple is a Python tuple.
type Tuple []any

// Global is a reference to a module-level name (GLOBAL / STACK_GLOBAL) that
// the resolver accepted as a value rather than a callable: a storage type,
// say.
type Global struct{ Module, Name string }

func (g Global) String() string { return g.Module + "." + g.Name }

// Object is an instance of a class the caller declared inert (Options.Inert):
// its constructor arguments and state are recorded, nothing is run.
type Object struct {
	Class Global
	Args  Tuple
	State any
}

// Callable is what a resolver returns for a global that a pickle may call
// (REDUCE, NEWOBJ): a Go function over decoded values.
type Callable func(args Tuple) (any, error)

// Class is a class the caller declared inert (Options.Inert): calling it
// records an *Object. Unlike a Callable it is a value, so it can be a dict
// key, as classes are in old Lightning checkpoints' "callbacks".
type Class struct{ Global }

// resolver maps a global to a value, a Callable, or an error naming it.
type resolver func(module, name string) (any, error)

// persistentLoader maps a persistent id to a value.
type persistentLoader func(pid any) (any, error)

// unpickler is a pickle machine restricted to data: every opcode that
// would import, construct or call goes through resolve; extensions,
// out-of-band buffers and the like are refused.
type unpickler struct {
	name       string // for errors
	data       []byte
	pos        int
	stack      []any
	metastack  [][]any
	memo       map[int64]any
	resolve    resolver
	persistent persistentLoader
}

// markObj is the MARK sentinel on the stack.
type markObj struct{}

var mark = &markObj{}

// errStop ends the loop at STOP.
var errStop = errors.New("stop")

// unpickle decodes one pickle from data and returns the value and the
// number of bytes it took.
func unpickle(name string, data []byte, resolve resolver, persistent persistentLoader) (any, int, error) {
	u := &unpickler{name: name, data: data, memo: map[int64]any{}, resolve: resolve, persistent: persistent}
	for {
		if u.pos >= len(u.data) {
			return nil, u.pos, fmt.Errorf("pickle ends without STOP at byte %d (truncated file?)", u.pos)
		}
		at := u.pos
		op := u.data[u.pos]
		u.pos++
		if err := u.step(op); err != nil {
			if err == errStop {
				if len(u.stack) != 1 || len(u.metastack) != 0 {
					return nil, u.pos, fmt.Errorf("pickle: STOP at byte %d with %d values on the stack", at, len(u.stack))
				}
				return u.stack[0], u.pos, nil
			}
			return nil, u.pos, fmt.Errorf("pickle: opcode %s at byte %d: %w", opName(op), at, err)
		}
	}
}

func opName(op byte) string {
	if op >= 0x20 && op < 0x7f {
		return strconv.QuoteRune(rune(op))
	}
	return fmt.Sprintf("0x%02x", op)
}

func (u *unpickler) step(op byte) error {
	switch op {
	case 0x80: // PROTO
		p, err := u.byte1()
		if err != nil {
			return err
		}
		if p > 5 {
			return fmt.Errorf("unsupported pickle protocol %d", p)
		}
	case 0x95: // FRAME: a length hint, the opcodes follow inline
		_, err := u.take(8)
		return err
	case '.': // STOP
		return errStop
	case '(': // MARK
		u.metastack = append(u.metastack, u.stack)
		u.stack = nil
	case '0': // POP
		if len(u.stack) == 0 {
			// POP right after MARK drops the mark.
			return u.popMarkOnly()
		}
		u.stack = u.stack[:len(u.stack)-1]
	case '1': // POP_MARK
		_, err := u.popMark()
		return err
	case '2': // DUP
		v, err := u.top()
		if err != nil {
			return err
		}
		u.push(v)

	// Scalars.
	case 'N':
		u.push(nil)
	case 0x88:
		u.push(true)
	case 0x89:
		u.push(false)
	case 'J': // BININT
		b, err := u.take(4)
		if err != nil {
			return err
		}
		u.push(int64(int32(binary.LittleEndian.Uint32(b))))
	case 'K': // BININT1
		b, err := u.byte1()
		if err != nil {
			return err
		}
		u.push(int64(b))
	case 'M': // BININT2
		b, err := u.take(2)
		if err != nil {
			return err
		}
		u.push(int64(binary.LittleEndian.Uint16(b)))
	case 0x8a: // LONG1
		n, err := u.byte1()
		if err != nil {
			return err
		}
		return u.long(int(n))
	case 0x8b: // LONG4
		b, err := u.take(4)
		if err != nil {
			return err
		}
		n := int32(binary.LittleEndian.Uint32(b))
		if n < 0 {
			return fmt.Errorf("negative length %d", n)
		}
		return u.long(int(n))
	case 'I': // INT (text; 00 and 01 are False and True)
		line, err := u.line()
		if err != nil {
			return err
		}
		switch line {
		case "00":
			u.push(false)
		case "01":
			u.push(true)
		default:
			return u.pushInt(strings.TrimSuffix(line, "L"))
		}
	case 'L': // LONG (text)
		line, err := u.line()
		if err != nil {
			return err
		}
		return u.pushInt(strings.TrimSuffix(line, "L"))
	case 'F': // FLOAT (text)
		line, err := u.line()
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(line, 64)
		if err != nil {
			return fmt.Errorf("bad float %q", line)
		}
		u.push(f)
	case 'G': // BINFLOAT (big-endian)
		b, err := u.take(8)
		if err != nil {
			return err
		}
		u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))

	// Strings and bytes.
	case 'X': // BINUNICODE
		return u.sized(4, true)
	case 0x8c: // SHORT_BINUNICODE
		return u.sized(1, true)
	case 0x8d: // BINUNICODE8
		return u.sized(8, true)
	case 'T': // BINSTRING (Python 2 str: kept as text)
		return u.sized(4, true)
	case 'U': // SHORT_BINSTRING
		return u.sized(1, true)
	case 'B': // BINBYTES
		return u.sized(4, false)
	case 'C': // SHORT_BINBYTES
		return u.sized(1, false)
	case 0x8e: // BINBYTES8
		return u.sized(8, false)
	case 0x96: // BYTEARRAY8
		return u.sized(8, false)
	case 'V': // UNICODE (raw-unicode-escape text)
		line, err := u.line()
		if err != nil {
			return err
		}
		u.push(line)
	case 'S': // STRING (quoted repr)
		line, err := u.line()
		if err != nil {
			return err
		}
		s, err := strconv.Unquote(pyQuoted(line))
		if err != nil {
			return fmt.Errorf("bad string literal %q", line)
		}
		u.push(s)

	// Containers.
	case ']': // EMPTY_LIST
		u.push(&List{})
	case 'l': // LIST
		items, err := u.popMark()
		if err != nil {
			return err
		}
		u.push(&List{Items: items})
	case 'a': // APPEND
		v, err := u.pop()
		if err != nil {
			return err
		}
		return u.appendTo([]any{v})
	case 'e': // APPENDS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.appendTo(items)
	case ')': // EMPTY_TUPLE
		u.push(Tuple{})
	case 't': // TUPLE
		items, err := u.popMark()
		if err != nil {
			return err
		}
		u.push(Tuple(items))
	case 0x85, 0x86, 0x87: // TUPLE1, TUPLE2, TUPLE3
		n := int(op - 0x84)
		if len(u.stack) < n {
			return errors.New("stack underflow")
		}
		t := Tuple(slices.Clone(u.stack[len(u.stack)-n:]))
		u.stack = u.stack[:len(u.stack)-n]
		u.push(t)
	case '}': // EMPTY_DICT
		u.push(NewDict())
	case 'd': // DICT
		items, err := u.popMark()
		if err != nil {
			return err
		}
		d := NewDict()
		if err := setItems(d, items); err != nil {
			return err
		}
		u.push(d)
	case 's': // SETITEM
		if len(u.stack) < 3 {
			return errors.New("stack underflow")
		}
		kv := slices.Clone(u.stack[len(u.stack)-2:])
		u.stack = u.stack[:len(u.stack)-2]
		return u.setItemsOnTop(kv)
	case 'u': // SETITEMS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.setItemsOnTop(items)
	case 0x8f: // EMPTY_SET
		u.push(&Set{})
	case 0x90: // ADDITEMS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		v, err := u.top()
		if err != nil {
			return err
		}
		s, ok := v.(*Set)
		if !ok {
			return fmt.Errorf("ADDITEMS to a %s", typeName(v))
		}
		s.Items = append(s.Items, items...)
	case 0x91: // FROZENSET
		items, err := u.popMark()
		if err != nil {
			return err
		}
		u.push(&Set{Items: items})

	// Memo.
	case 'p': // PUT
		line, err := u.line()
		if err != nil {
			return err
		}
		i, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			return fmt.Errorf("bad memo index %q", line)
		}
		return u.put(i)
	case 'q': // BINPUT
		b, err := u.byte1()
		if err != nil {
			return err
		}
		return u.put(int64(b))
	case 'r': // LONG_BINPUT
		b, err := u.take(4)
		if err != nil {
			return err
		}
		return u.put(int64(binary.LittleEndian.Uint32(b)))
	case 0x94: // MEMOIZE
		return u.put(int64(len(u.memo)))
	case 'g': // GET
		line, err := u.line()
		if err != nil {
			return err
		}
		i, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			return fmt.Errorf("bad memo index %q", line)
		}
		return u.get(i)
	case 'h': // BINGET
		b, err := u.byte1()
		if err != nil {
			return err
		}
		return u.get(int64(b))
	case 'j': // LONG_BINGET
		b, err := u.take(4)
		if err != nil {
			return err
		}
		return u.get(int64(binary.LittleEndian.Uint32(b)))

	// Names, calls and objects: only through the resolver.
	case 'c': // GLOBAL
		module, err := u.line()
		if err != nil {
			return err
		}
		name, err := u.line()
		if err != nil {
			return err
		}
		return u.global(module, name)
	case 0x93: // STACK_GLOBAL
		nameV, err := u.pop()
		if err != nil {
			return err
		}
		moduleV, err := u.pop()
		if err != nil {
			return err
		}
		module, ok1 := moduleV.(string)
		name, ok2 := nameV.(string)
		if !ok1 || !ok2 {
			return errors.New("STACK_GLOBAL needs two strings")
		}
		return u.global(module, name)
	case 'R': // REDUCE
		argsV, err := u.pop()
		if err != nil {
			return err
		}
		fn, err := u.pop()
		if err != nil {
			return err
		}
		args, ok := argsV.(Tuple)
		if !ok {
			return fmt.Errorf("REDUCE arguments are a %s, not a tuple", typeName(argsV))
		}
		return u.call(fn, args)
	case 0x81: // NEWOBJ: cls.__new__(cls, *args)
		argsV, err := u.pop()
		if err != nil {
			return err
		}
		cls, err := u.pop()
		if err != nil {
			return err
		}
		args, ok := argsV.(Tuple)
		if !ok {
			return fmt.Errorf("NEWOBJ arguments are a %s, not a tuple", typeName(argsV))
		}
		return u.call(cls, args)
	case 0x92: // NEWOBJ_EX
		kwargs, err := u.pop()
		if err != nil {
			return err
		}
		argsV, err := u.pop()
		if err != nil {
			return err
		}
		cls, err := u.pop()
		if err != nil {
			return err
		}
		args, ok := argsV.(Tuple)
		if !ok {
			return fmt.Errorf("NEWOBJ_EX arguments are a %s, not a tuple", typeName(argsV))
		}
		if d, ok := kwargs.(*Dict); !ok || d.Len() != 0 {
			return fmt.Errorf("NEWOBJ_EX with keyword arguments on %s is not supported", typeName(cls))
		}
		return u.call(cls, args)
	case 'i': // INST: module, name, then arguments since MARK
		module, err := u.line()
		if err != nil {
			return err
		}
		name, err := u.line()
		if err != nil {
			return err
		}
		args, err := u.popMark()
		if err != nil {
			return err
		}
		cls, err := u.resolve(module, name)
		if err != nil {
			return err
		}
		return u.call(cls, Tuple(args))
	case 'o': // OBJ: class and arguments since MARK
		items, err := u.popMark()
		if err != nil {
			return err
		}
		if len(items) == 0 {
			return errors.New("OBJ without a class")
		}
		return u.call(items[0], Tuple(items[1:]))
	case 'b': // BUILD: set state on the object below
		state, err := u.pop()
		if err != nil {
			return err
		}
		v, err := u.top()
		if err != nil {
			return err
		}
		return build(v, state)
	case 'P': // PERSID (text)
		line, err := u.line()
		if err != nil {
			return err
		}
		return u.persid(line)
	case 'Q': // BINPERSID
		pid, err := u.pop()
		if err != nil {
			return err
		}
		return u.persid(pid)
	case 0x82, 0x83, 0x84: // EXT1, EXT2, EXT4
		return errors.New("the copyreg extension registry is not supported (refused)")
	case 0x97, 0x98: // NEXT_BUFFER, READONLY_BUFFER
		return errors.New("out-of-band buffers are not supported")
	default:
		return fmt.Errorf("unknown opcode")
	}
	return nil
}

// List is a Python list.
type List struct{ Items []any }

// Set is a Python set or frozenset.
type Set struct{ Items []any }

func (u *unpickler) push(v any) { u.stack = append(u.stack, v) }

func (u *unpickler) pop() (any, error) {
	if len(u.stack) == 0 {
		return nil, errors.New("stack underflow")
	}
	v := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	return v, nil
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) == 0 {
		return nil, errors.New("stack underflow")
	}
	return u.stack[len(u.stack)-1], nil
}

// popMark returns the items pushed since the last MARK and restores the
// stack below it.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.metastack) == 0 {
		return nil, errors.New("no MARK on the stack")
	}
	items := u.stack
	u.stack = u.metastack[len(u.metastack)-1]
	u.metastack = u.metastack[:len(u.metastack)-1]
	return items, nil
}

func (u *unpickler) popMarkOnly() error {
	if len(u.metastack) == 0 {
		return errors.New("stack underflow")
	}
	_, err := u.popMark()
	return err
}

func (u *unpickler) take(n int) ([]byte, error) {
	if n < 0 || n > len(u.data)-u.pos {
		return nil, fmt.Errorf("needs %d bytes, %d left (truncated file?)", n, len(u.data)-u.pos)
	}
	b := u.data[u.pos : u.pos+n]
	u.pos += n
	return b, nil
}

func (u *unpickler) byte1() (byte, error) {
	b, err := u.take(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (u *unpickler) line() (string, error) {
	i := strings.IndexByte(string(u.data[u.pos:min(len(u.data), u.pos+1<<16)]), '\n')
	if i < 0 {
		return "", errors.New("unterminated line (truncated file?)")
	}
	s := string(u.data[u.pos : u.pos+i])
	u.pos += i + 1
	return s, nil
}

// sized reads a length-prefixed string (text) or bytes value.
func (u *unpickler) sized(lenBytes int, text bool) error {
	b, err := u.take(lenBytes)
	if err != nil {
		return err
	}
	var n uint64
	switch lenBytes {
	case 1:
		n = uint64(b[0])
	case 4:
		n = uint64(binary.LittleEndian.Uint32(b))
	case 8:
		n = binary.LittleEndian.Uint64(b)
	}
	if n > uint64(len(u.data)-u.pos) {
		return fmt.Errorf("length %d exceeds the %d bytes left (truncated file?)", n, len(u.data)-u.pos)
	}
	v, _ := u.take(int(n))
	if text {
		if !utf8.Valid(v) {
			// Python 2 str: latin-1.
			r := make([]rune, len(v))
			for i, c := range v {
				r[i] = rune(c)
			}
			u.push(string(r))
			return nil
		}
		u.push(string(v))
		return nil
	}
	u.push(slices.Clone(v))
	return nil
}

// long decodes a little-endian two's-complement integer of n bytes.
func (u *unpickler) long(n int) error {
	b, err := u.take(n)
	if err != nil {
		return err
	}
	if n == 0 {
		u.push(int64(0))
		return nil
	}
	if n <= 8 {
		var v uint64
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		shift := uint(64 - 8*n)
		u.push(int64(v<<shift) >> shift)
		return nil
	}
	be := make([]byte, n)
	for i := range b {
		be[n-1-i] = b[i]
	}
	x := new(big.Int).SetBytes(be)
	if b[n-1]&0x80 != 0 {
		x.Sub(x, new(big.Int).Lsh(big.NewInt(1), uint(8*n)))
	}
	u.push(normInt(x))
	return nil
}

func (u *unpickler) pushInt(s string) error {
	x, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return fmt.Errorf("bad integer %q", s)
	}
	u.push(normInt(x))
	return nil
}

// normInt is an int64 when the value fits, else the *big.Int.
func normInt(x *big.Int) any {
	if x.IsInt64() {
		return x.Int64()
	}
	return x
}

// pyQuoted turns a Python string repr ('...' or "...") into a Go one.
func pyQuoted(s string) string {
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		inner := strings.ReplaceAll(s[1:len(s)-1], `\'`, `'`)
		return `"` + strings.ReplaceAll(inner, `"`, `\"`) + `"`
	}
	return s
}

func (u *unpickler) put(i int64) error {
	v, err := u.top()
	if err != nil {
		return err
	}
	u.memo[i] = v
	return nil
}

func (u *unpickler) get(i int64) error {
	v, ok := u.memo[i]
	if !ok {
		return fmt.Errorf("memo index %d was never stored", i)
	}
	u.push(v)
	return nil
}

func (u *unpickler) appendTo(items []any) error {
	v, err := u.top()
	if err != nil {
		return err
	}
	l, ok := v.(*List)
	if !ok {
		return fmt.Errorf("APPEND to a %s", typeName(v))
	}
	l.Items = append(l.Items, items...)
	return nil
}

func (u *unpickler) setItemsOnTop(items []any) error {
	v, err := u.top()
	if err != nil {
		return err
	}
	d, ok := v.(*Dict)
	if !ok {
		return fmt.Errorf("SETITEM on a %s", typeName(v))
	}
	return setItems(d, items)
}

func setItems(d *Dict, items []any) error {
	if len(items)%2 != 0 {
		return errors.New("odd number of items for a dict")
	}
	for i := 0; i < len(items); i += 2 {
		if err := d.set(items[i], items[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func (u *unpickler) global(module, name string) error {
	v, err := u.resolve(module, name)
	if err != nil {
		return err
	}
	u.push(v)
	return nil
}

func (u *unpickler) call(fn any, args Tuple) error {
	var c Callable
	switch f := fn.(type) {
	case Callable:
		c = f
	case Class:
		c = func(args Tuple) (any, error) { return &Object{Class: f.Global, Args: args}, nil }
	default:
		return fmt.Errorf("%s is not callable", typeName(fn))
	}
	v, err := c(args)
	if err != nil {
		return err
	}
	u.push(v)
	return nil
}

func (u *unpickler) persid(pid any) error {
	if u.persistent == nil {
		return errors.New("persistent ids are not allowed here")
	}
	v, err := u.persistent(pid)
	if err != nil {
		return err
	}
	u.push(v)
	return nil
}

// build applies BUILD's state: attributes on a dict (an OrderedDict's
// _metadata), the state of an inert object.
func build(v, state any) error {
	switch o := v.(type) {
	case *Dict:
		sd, ok := state.(*Dict)
		if !ok {
			return fmt.Errorf("BUILD on a dict with a %s state", typeName(state))
		}
		if o.Attrs == nil {
			o.Attrs = NewDict()
		}
		var err error
		sd.Entries(func(k, v any) bool {
			err = o.Attrs.set(k, v)
			return err == nil
		})
		return err
	case *Object:
		o.State = state
		return nil
	case *Tensor:
		// torch's _rebuild_from_type_v2 sets a tensor subclass's __dict__;
		// a plain tensor may get an empty state.
		if d, ok := state.(*Dict); ok && d.Len() == 0 {
			return nil
		}
		if state == nil {
			return nil
		}
		return errors.New("tensor attributes are not supported")
	}
	return fmt.Errorf("BUILD on a %s", typeName(v))
}

// typeName names a decoded value's Python type, for errors.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64, *big.Int:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case *List:
		return "list"
	case Tuple:
		return "tuple"
	case *Dict:
		return "dict"
	case *Set:
		return "set"
	case *Tensor:
		return "tensor"
	case *Storage:
		return "storage"
	case Global:
		return "global " + v.(Global).String()
	case Callable:
		return "callable"
	case Class:
		return "class " + v.(Class).String()
	case *Object:
		return v.(*Object).Class.String() + " object"
	}
	return fmt.Sprintf("%T", v)
}
