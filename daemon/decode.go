package daemon

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// A run request's JSON is read as a stream rather than decoded into Go
// values first: a tensor's values are converted to their dtype's bytes as
// they arrive (4 bytes for a float32, where a []float64 took 8, and twice
// that while growing), and a data array longer than its shape allows is
// refused at the first extra value, not after the whole body is read.
// encoding/json's token API costs about a microsecond per number, so the
// few shapes a request has are scanned here; small values (shapes,
// adapters) are cut out whole and handed to encoding/json.

// jsonDecoder reads one run request.
type jsonDecoder struct {
	r   *bufio.Reader
	off int64 // bytes consumed, for error positions
	buf []byte
}

func newJSONDecoder(r io.Reader) *jsonDecoder {
	return &jsonDecoder{r: bufio.NewReaderSize(r, 64<<10)}
}

// maxNesting bounds the depth of arrays and objects in a request.
const maxNesting = 64

func (d *jsonDecoder) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", d.off, fmt.Sprintf(format, args...))
}

// end turns the end of the input into an error saying what was being
// read; other errors (a body over its size limit) pass through.
func (d *jsonDecoder) end(err error, what string) error {
	if err == io.EOF {
		return d.errorf("%s: unexpected end of JSON", what)
	}
	return err
}

func (d *jsonDecoder) readByte() (byte, error) {
	c, err := d.r.ReadByte()
	if err == io.EOF {
		return 0, d.errorf("unexpected end of JSON")
	}
	if err == nil {
		d.off++
	}
	return c, err
}

// peek skips white space and returns the next byte without consuming it;
// at the end of the input it returns 0 and io.EOF.
func (d *jsonDecoder) peek() (byte, error) {
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			return 0, err
		}
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			d.r.UnreadByte()
			return c, nil
		}
		d.off++
	}
}

// expect consumes the byte want, after white space.
func (d *jsonDecoder) expect(want byte, what string) error {
	c, err := d.peek()
	if err != nil {
		return d.end(err, what)
	}
	if c != want {
		return d.errorf("%s: want %q, got %q", what, want, c)
	}
	d.readByte()
	return nil
}

// more reports whether a list (of an object or an array) has another
// element, consuming the comma between elements; first is true before the
// first element.
func (d *jsonDecoder) more(first bool, end byte, what string) (bool, error) {
	c, err := d.peek()
	if err != nil {
		return false, d.end(err, what)
	}
	if c == end {
		d.readByte()
		return false, nil
	}
	if first {
		return true, nil
	}
	if c != ',' {
		return false, d.errorf("%s: want ',' or %q, got %q", what, end, c)
	}
	d.readByte()
	return true, nil
}

// object calls f for each key of an object; f reads the value. A key
// given twice is an error: which of the two was meant is not for the
// server to guess.
func (d *jsonDecoder) object(what string, f func(key string) error) error {
	if err := d.expect('{', what); err != nil {
		return err
	}
	seen := map[string]bool{}
	for first := true; ; first = false {
		ok, err := d.more(first, '}', what)
		if err != nil || !ok {
			return err
		}
		key, err := d.str(what + " key")
		if err != nil {
			return err
		}
		if seen[key] {
			return d.errorf("%s: key %q is given twice", what, key)
		}
		seen[key] = true
		if err := d.expect(':', what); err != nil {
			return err
		}
		if err := f(key); err != nil {
			return err
		}
	}
}

// str reads a string.
func (d *jsonDecoder) str(what string) (string, error) {
	raw, err := d.rawString(what)
	if err != nil {
		return "", err
	}
	if plainString(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", d.errorf("%s: %v", what, err)
	}
	return s, nil
}

// plainString reports whether a string's JSON text needs no decoding: no
// escapes, no control characters (which JSON forbids), valid UTF-8.
func plainString(raw []byte) bool {
	for _, c := range raw {
		if c < 0x20 || c == '\\' {
			return false
		}
	}
	return utf8.Valid(raw)
}

// rawString reads a string's JSON text, quotes included, into d.buf.
func (d *jsonDecoder) rawString(what string) ([]byte, error) {
	if err := d.expect('"', what); err != nil {
		return nil, err
	}
	d.buf = append(d.buf[:0], '"')
	for {
		chunk, err := d.r.ReadSlice('"')
		d.off += int64(len(chunk))
		d.buf = append(d.buf, chunk...)
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			return nil, d.errorf("%s: unterminated string", what)
		case err != nil:
			return nil, err
		}
		// The quote ends the string unless an odd number of backslashes
		// precede it.
		n := 0
		for i := len(d.buf) - 2; i > 0 && d.buf[i] == '\\'; i-- {
			n++
		}
		if n%2 == 0 {
			return d.buf, nil
		}
	}
}

// number reads a number's text, checked against JSON's grammar.
func (d *jsonDecoder) number(what string) ([]byte, error) {
	if _, err := d.peek(); err != nil {
		return nil, d.end(err, what)
	}
	d.buf = d.buf[:0]
	for {
		c, err := d.r.ReadByte()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if !(c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E') {
			d.r.UnreadByte()
			break
		}
		d.off++
		d.buf = append(d.buf, c)
	}
	if !validNumber(d.buf) {
		if len(d.buf) == 0 {
			c, _ := d.peek()
			return nil, d.errorf("%s: want a number, got %q (not a number)", what, c)
		}
		return nil, d.errorf("%s: %q is not a JSON number", what, d.buf)
	}
	return d.buf, nil
}

// validNumber checks JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(b []byte) bool {
	i := 0
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if !digits() {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(b)
}

// literal reads true, false or null.
func (d *jsonDecoder) literal(what string) (string, error) {
	c, err := d.peek()
	if err != nil {
		return "", d.end(err, what)
	}
	for _, lit := range []string{"true", "false", "null"} {
		if c == lit[0] {
			b, err := d.r.Peek(len(lit))
			if err == nil && string(b) == lit {
				d.r.Discard(len(lit))
				d.off += int64(len(lit))
				return lit, nil
			}
		}
	}
	return "", d.errorf("%s: unexpected %q", what, c)
}

func (d *jsonDecoder) boolean(what string) (bool, error) {
	lit, err := d.literal(what)
	if err != nil || lit == "null" {
		return false, d.errorf("%s: want true or false", what)
	}
	return lit == "true", nil
}

// raw reads any value and returns its JSON text (a fresh slice).
func (d *jsonDecoder) raw(what string) ([]byte, error) {
	var out []byte
	err := d.rawInto(&out, what, 0)
	return out, err
}

func (d *jsonDecoder) rawInto(out *[]byte, what string, depth int) error {
	if depth > maxNesting {
		return d.errorf("%s: nested more than %d deep", what, maxNesting)
	}
	c, err := d.peek()
	if err != nil {
		return d.end(err, what)
	}
	switch {
	case c == '"':
		s, err := d.rawString(what)
		*out = append(*out, s...)
		return err
	case c == '-' || c >= '0' && c <= '9':
		n, err := d.number(what)
		*out = append(*out, n...)
		return err
	case c == '{':
		d.readByte()
		*out = append(*out, '{')
		seen := map[string]bool{}
		for first := true; ; first = false {
			ok, err := d.more(first, '}', what)
			if err != nil {
				return err
			}
			if !ok {
				*out = append(*out, '}')
				return nil
			}
			if !first {
				*out = append(*out, ',')
			}
			s, err := d.rawString(what + " key")
			if err != nil {
				return err
			}
			key := string(s[1 : len(s)-1])
			if bytes.IndexByte(s, '\\') >= 0 {
				if err := json.Unmarshal(s, &key); err != nil {
					return d.errorf("%s: %v", what, err)
				}
			}
			if seen[key] {
				return d.errorf("%s: key %s is given twice", what, s)
			}
			seen[key] = true
			*out = append(append(*out, s...), ':')
			if err := d.expect(':', what); err != nil {
				return err
			}
			if err := d.rawInto(out, what, depth+1); err != nil {
				return err
			}
		}
	case c == '[':
		d.readByte()
		*out = append(*out, '[')
		for first := true; ; first = false {
			ok, err := d.more(first, ']', what)
			if err != nil {
				return err
			}
			if !ok {
				*out = append(*out, ']')
				return nil
			}
			if !first {
				*out = append(*out, ',')
			}
			if err := d.rawInto(out, what, depth+1); err != nil {
				return err
			}
		}
	}
	lit, err := d.literal(what)
	*out = append(*out, lit...)
	return err
}

// decodeRaw reads a value and decodes it into v, refusing unknown fields.
func (d *jsonDecoder) decodeRaw(what string, v any) error {
	raw, err := d.raw(what)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// runRequest reads a whole run request: its fields into req and its
// tensors, converted, into inputs. The request is one object, with
// nothing but white space after it.
func (d *jsonDecoder) runRequest(req *RunRequest, inputs map[string]weights.Raw) error {
	if err := d.requestObject(req, inputs); err != nil {
		return err
	}
	c, err := d.peek()
	switch {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	}
	return d.errorf("unexpected %q after the request object (send one JSON object)", c)
}

func (d *jsonDecoder) requestObject(req *RunRequest, inputs map[string]weights.Raw) error {
	return d.object("request", func(key string) error {
		var err error
		switch key {
		case "model":
			req.Model, err = d.str("model")
		case "outputs":
			req.Outputs, err = d.str("outputs")
		case "fuse":
			req.Fuse, err = d.boolean("fuse")
		case "adapters":
			err = d.decodeRaw("adapters", &req.Adapters)
		case "inputs":
			err = d.object("inputs", func(name string) error {
				if _, dup := inputs[name]; dup {
					return fmt.Errorf("input %s is given twice", name)
				}
				raw, err := d.tensor(name)
				if err != nil {
					return fmt.Errorf("inputs: %w", err)
				}
				inputs[name] = raw
				return nil
			})
		default:
			err = fmt.Errorf("unknown field %q (want model, inputs, adapters, fuse, outputs)", key)
		}
		return err
	})
}

// tensor reads one JSON tensor: dtype, shape, and data or data_base64, in
// any order.
func (d *jsonDecoder) tensor(name string) (weights.Raw, error) {
	var (
		dt                tensor.DType
		dtErr             error = errors.New("no dtype")
		shape             []int64
		haveData, haveB64 bool
		numel             int64     = -1 // known once dtype and shape are
		data              []byte         // converted values, when numel was known first
		early             []float64      // values read before dtype or shape
		b64               []byte
	)
	known := func() error {
		if dtErr == nil && shape != nil && numel < 0 {
			n, err := checkShape(name, shape)
			if err != nil {
				return err
			}
			numel = n
		}
		return nil
	}
	err := d.object(name, func(key string) error {
		switch key {
		case "dtype":
			s, err := d.str(name + ".dtype")
			if err != nil {
				return err
			}
			if dt, dtErr = tensor.ParseDType(s); dtErr != nil {
				return fmt.Errorf("%s: %w", name, dtErr)
			}
			return known()
		case "shape":
			if err := d.decodeRaw(name+".shape", &shape); err != nil {
				return err
			}
			if shape == nil {
				shape = []int64{}
			}
			return known()
		case "data":
			if c, _ := d.peek(); c == 'n' {
				_, err := d.literal(name + ".data") // "data": null is no data
				return err
			}
			what := name + ".data"
			if err := d.expect('[', what); err != nil {
				return err
			}
			haveData = true
			for i := int64(0); ; i++ {
				ok, err := d.more(i == 0, ']', what)
				if err != nil || !ok {
					return err
				}
				num, err := d.number("data")
				if err != nil {
					return fmt.Errorf("%s.data element %d: %w", name, i, err)
				}
				if numel >= 0 {
					if i >= numel {
						return fmt.Errorf("%s: more than %d values for %s %v", name, numel, dt, shape)
					}
					if len(data) == cap(data) { // grow, but never past the tensor's size
						want := min(max(2*int64(cap(data)), 4096), numel*int64(dt.Size()))
						data = append(make([]byte, 0, want), data...)
					}
					if data, err = appendElement(data, dt, num, i); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					continue
				}
				if i >= maxJSONElements {
					return fmt.Errorf("%s: data has more than %d values", name, maxJSONElements)
				}
				v, err := strconv.ParseFloat(string(num), 64)
				if err != nil {
					return fmt.Errorf("%s.data: element %d: %v", name, i, err)
				}
				early = append(early, v)
			}
		case "data_base64":
			s, err := d.str(name + ".data_base64")
			if err != nil {
				return err
			}
			if haveB64 = s != ""; haveB64 {
				if b64, err = base64.StdEncoding.DecodeString(s); err != nil {
					return fmt.Errorf("%s: data_base64: %w", name, err)
				}
			}
			return nil
		}
		return fmt.Errorf("%s: unknown field %q (want dtype, shape, data, data_base64)", name, key)
	})
	if err != nil {
		return weights.Raw{}, err
	}
	if dtErr != nil {
		return weights.Raw{}, fmt.Errorf("%s: %w", name, dtErr)
	}
	if shape == nil {
		return weights.Raw{}, fmt.Errorf("%s: no shape", name)
	}
	if err := known(); err != nil {
		return weights.Raw{}, err
	}
	switch {
	case haveB64 && haveData:
		return weights.Raw{}, fmt.Errorf("%s: give data or data_base64, not both", name)
	case haveB64:
		if int64(len(b64)) != numel*int64(dt.Size()) {
			return weights.Raw{}, fmt.Errorf("%s: data_base64 has %d bytes; %s %v needs %d", name, len(b64), dt, shape, numel*int64(dt.Size()))
		}
		return weights.Raw{DType: dt, Shape: shape, Data: b64}, nil
	case early != nil:
		if int64(len(early)) != numel {
			return weights.Raw{}, fmt.Errorf("%s: %d values for shape %v (%d elements)", name, len(early), shape, numel)
		}
		data = make([]byte, 0, numel*int64(dt.Size()))
		for i, v := range early {
			if data, err = appendFloat(data, dt, v, int64(i)); err != nil {
				return weights.Raw{}, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if got := int64(len(data)) / int64(dt.Size()); got != numel {
		return weights.Raw{}, fmt.Errorf("%s: %d values for shape %v (%d elements)", name, got, shape, numel)
	}
	if data == nil {
		data = []byte{}
	}
	return weights.Raw{DType: dt, Shape: shape, Data: data}, nil
}

// appendElement converts one JSON number to dt's bytes. Integers are read
// exactly.
func appendElement(b []byte, dt tensor.DType, num []byte, i int64) ([]byte, error) {
	if dt == tensor.Int64 {
		if v, err := strconv.ParseInt(string(num), 10, 64); err == nil {
			return appendInt64(b, v), nil
		}
	}
	v, err := strconv.ParseFloat(string(num), 64)
	if err != nil {
		return b, fmt.Errorf("element %d (%s): %v", i, num, err)
	}
	return appendFloat(b, dt, v, i)
}
