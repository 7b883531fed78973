package convert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/torchfile"
)

// Source is what a user points the converter at: a diffusers pipeline
// folder, one component's folder, or a single file.
type Source struct {
	Path string
	Kind string // "diffusers pipeline", "diffusers component folder", "safetensors file", "torch zip file", "torch legacy file"
	// Parts are the key spaces: a pipeline's component folders, or the
	// one folder or file.
	Parts []*Part
	// Skipped says what was not read, and why (a safety checker, a
	// tokenizer).
	Skipped []string
	files   []*sourceFile
}

// Part is a set of tensors sharing one key space: a file, or the shards
// of one component.
type Part struct {
	Name   string         // the pipeline's subfolder, "" otherwise
	Class  string         // the class config.json / model_index.json names, if any
	Config map[string]any // the folder's config.json, if any
	Files  []*sourceFile
	// Leaves are the non-tensor values of a pickle (a checkpoint's
	// global_step, say), "key = value".
	Leaves  []string
	keys    []string // in file order
	tensors map[string]*tensorRef
}

// Keys lists the part's tensor keys in file order.
func (p *Part) Keys() []string { return slices.Clone(p.keys) }

// label names the part in reports.
func (p *Part) label() string {
	if p.Name != "" {
		return p.Name + "/"
	}
	return filepath.Base(p.Files[0].path)
}

// tensorRef is one source tensor.
type tensorRef struct {
	key   string
	dtype string // safetensors spelling: F32, F16, BF16, F64, I64, ...
	shape []int64
	file  *sourceFile
	// read returns the tensor's bytes, row-major and little-endian, and
	// the function to call once done with them.
	read func() ([]byte, func(), error)
}

func (t *tensorRef) numel() int64 {
	n := int64(1)
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// sourceFile is one opened weights file.
type sourceFile struct {
	path   string
	format string // "safetensors", "torch zip", "torch legacy"
	size   int64
	close  func() error
	digest string // sha256:<hex>, computed on first use
}

// Digest is the file's sha256, read once.
func (f *sourceFile) Digest() (string, error) {
	if f.digest != "" {
		return f.digest, nil
	}
	fd, err := os.Open(f.path)
	if err != nil {
		return "", err
	}
	defer fd.Close()
	h := sha256.New()
	// Read, not mapped: the page cache holds it, not this process.
	if _, err := io.CopyBuffer(h, fd, make([]byte, 1<<20)); err != nil {
		return "", fmt.Errorf("%s: %w", f.path, err)
	}
	f.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return f.digest, nil
}

// knownClasses maps the classes diffusers / transformers write in
// config.json and model_index.json to components.
var knownClasses = map[string]string{
	"UNet2DConditionModel": "unet",
	"CLIPTextModel":        "text_encoder",
	"AutoencoderKL":        "autoencoder",
	"ControlNetModel":      "controlnet",
}

// lightningCallback is a class Lightning checkpoints (the original SD
// .ckpt files among them) carry next to the weights: read as an inert
// record, never instantiated, and ignored.
const lightningCallback = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"

// Open opens a source: a folder (diffusers pipeline or component) or a
// file (safetensors or torch, whatever its extension).
func Open(path string, o Options) (*Source, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	src := &Source{Path: path}
	if st.IsDir() {
		err = src.openDir(path, o)
	} else {
		var p *Part
		if p, err = src.openFiles("", []string{path}, o); err == nil {
			src.Parts = []*Part{p}
			src.Kind = p.Files[0].format + " file"
		}
	}
	if err != nil {
		src.Close()
		return nil, err
	}
	return src, nil
}

// Close closes every file.
func (s *Source) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.close())
	}
	s.files = nil
	return errors.Join(errs...)
}

func (s *Source) openDir(dir string, o Options) error {
	index, err := readJSON(filepath.Join(dir, "model_index.json"))
	switch {
	case err == nil:
		s.Kind = "diffusers pipeline"
		names := make([]string, 0, len(index))
		for name := range index {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			lib, class, ok := libraryClass(index[name])
			if strings.HasPrefix(name, "_") || !ok {
				continue
			}
			if _, known := knownClasses[class]; !known {
				s.Skipped = append(s.Skipped, fmt.Sprintf("%s/ (%s %s): not a component refinersd converts", name, lib, class))
				continue
			}
			p, err := s.openComponentDir(filepath.Join(dir, name), name, o)
			if err != nil {
				return err
			}
			p.Class = class
			s.Parts = append(s.Parts, p)
		}
		if len(s.Parts) == 0 {
			return fmt.Errorf("convert: %s: model_index.json names no component refinersd converts (%s)", dir, strings.Join(s.Skipped, "; "))
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	s.Kind = "diffusers component folder"
	p, err := s.openComponentDir(dir, "", o)
	if err != nil {
		return err
	}
	s.Parts = []*Part{p}
	return nil
}

// libraryClass reads a model_index.json entry ["diffusers", "UNet2DConditionModel"].
func libraryClass(v any) (string, string, bool) {
	l, ok := v.([]any)
	if !ok || len(l) != 2 {
		return "", "", false
	}
	lib, ok1 := l[0].(string)
	class, ok2 := l[1].(string)
	return lib, class, ok1 && ok2
}

// weightStems are the weight file names of diffusers and transformers.
var weightStems = []string{"diffusion_pytorch_model", "model", "pytorch_model"}

// openComponentDir reads one component folder: its config.json and its
// weights (safetensors before .bin; a variant such as fp16 when asked;
// sharded files through their index).
func (s *Source) openComponentDir(dir, name string, o Options) (*Part, error) {
	cfg, err := readJSON(filepath.Join(dir, "config.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var tried []string
	for _, ext := range []string{".safetensors", ".bin"} {
		for _, stem := range weightStems {
			base := stem
			if o.Variant != "" {
				base += "." + o.Variant
			}
			single := filepath.Join(dir, base+ext)
			index := single + ".index.json"
			tried = append(tried, filepath.Base(single))
			var files []string
			if _, err := os.Stat(single); err == nil {
				files = []string{single}
			} else if files, err = shards(index); err != nil {
				return nil, err
			}
			if files == nil {
				continue
			}
			p, err := s.openFiles(name, files, o)
			if err != nil {
				return nil, err
			}
			p.Config = cfg
			p.Class = classOf(cfg)
			return p, nil
		}
	}
	where := dir
	if name != "" {
		where = name + "/"
	}
	return nil, fmt.Errorf("convert: %s: no weights (looked for %s and their .index.json shards)", where, strings.Join(tried, ", "))
}

// shards lists the files of a sharded checkpoint's index, nil if there is
// no index.
func shards(index string) ([]string, error) {
	m, err := readJSON(index)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	wm, ok := m["weight_map"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("convert: %s: no weight_map", index)
	}
	var files []string
	for key, v := range wm {
		f, ok := v.(string)
		if !ok || f != filepath.Base(f) {
			return nil, fmt.Errorf("convert: %s: key %s maps to %v, not a file name", index, key, v)
		}
		p := filepath.Join(filepath.Dir(index), f)
		if !slices.Contains(files, p) {
			files = append(files, p)
		}
	}
	slices.Sort(files)
	return files, nil
}

// classOf reads the class a config.json names: diffusers' _class_name or
// transformers' architectures[0].
func classOf(cfg map[string]any) string {
	if c, ok := cfg["_class_name"].(string); ok {
		return c
	}
	if a, ok := cfg["architectures"].([]any); ok && len(a) > 0 {
		c, _ := a[0].(string)
		return c
	}
	return ""
}

func readJSON(p string) (map[string]any, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("convert: %s: %w", p, err)
	}
	return m, nil
}

// openFiles reads the files of one key space.
func (s *Source) openFiles(name string, paths []string, o Options) (*Part, error) {
	p := &Part{Name: name, tensors: map[string]*tensorRef{}}
	for _, path := range paths {
		f, refs, leaves, err := openFile(path, o)
		if err != nil {
			return nil, err
		}
		s.files = append(s.files, f)
		p.Files = append(p.Files, f)
		p.Leaves = append(p.Leaves, leaves...)
		for _, r := range refs {
			if _, dup := p.tensors[r.key]; dup {
				return nil, fmt.Errorf("convert: %s: key %s is also in another shard", path, r.key)
			}
			p.tensors[r.key] = r
			p.keys = append(p.keys, r.key)
		}
	}
	return p, nil
}

// openFile opens one weights file, safetensors or torch by its content.
func openFile(path string, o Options) (*sourceFile, []*tensorRef, []string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("convert: %w", err)
	}
	if isSafetensors(path) {
		return openSafetensors(path, st.Size())
	}
	return openTorch(path, st.Size(), o)
}

// isSafetensors recognises a safetensors file: an 8-byte little-endian
// header length, then a JSON object.
func isSafetensors(path string) bool {
	fd, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fd.Close()
	var b [9]byte
	if _, err := io.ReadFull(fd, b[:]); err != nil {
		return false
	}
	return b[8] == '{' && binary.LittleEndian.Uint64(b[:8]) < 1<<40
}

func openSafetensors(path string, size int64) (*sourceFile, []*tensorRef, []string, error) {
	wf, err := weights.Open(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("convert: %w", err)
	}
	sf := &sourceFile{path: path, format: "safetensors", size: size, close: wf.Close}
	infos := map[string]weights.Info{}
	keys := wf.Keys()
	for _, k := range keys {
		infos[k], _ = wf.Info(k)
	}
	unsupported := wf.Unsupported()
	for k := range unsupported {
		keys = append(keys, k)
	}
	// File order: by offset, as the writer laid the tensors out.
	slices.SortFunc(keys, func(a, b string) int { return int(infos[a].Offset[0] - infos[b].Offset[0]) })
	refs := make([]*tensorRef, 0, len(keys))
	for _, k := range keys {
		r := &tensorRef{key: k, file: sf}
		if dt, bad := unsupported[k]; bad {
			r.dtype = dt
			r.read = func() ([]byte, func(), error) {
				return nil, nil, fmt.Errorf("%s: key %s: dtype %s is not supported", path, k, dt)
			}
		} else {
			info := infos[k]
			r.dtype, r.shape = stName(info.DType.String()), info.Shape
			r.read = func() ([]byte, func(), error) { return wf.Borrow(k) }
		}
		refs = append(refs, r)
	}
	return sf, refs, nil, nil
}

// stName spells a tensor.DType name the safetensors way.
func stName(dt string) string {
	switch dt {
	case "float32":
		return "F32"
	case "float16":
		return "F16"
	case "bfloat16":
		return "BF16"
	case "int64":
		return "I64"
	case "bool":
		return "BOOL"
	}
	return dt
}

func openTorch(path string, size int64, o Options) (*sourceFile, []*tensorRef, []string, error) {
	tf, err := torchfile.OpenWith(path, torchfile.Options{Inert: append([]string{lightningCallback}, o.AllowClasses...)})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("convert: %w", err)
	}
	format := "torch zip"
	if tf.Legacy() {
		format = "torch legacy"
	}
	sf := &sourceFile{path: path, format: format, size: size, close: tf.Close}
	// A Lightning checkpoint keeps the weights under "state_dict", next
	// to training state (global_step, callbacks...).
	root := tf.Root()
	var leaves []string
	if d, ok := root.(*torchfile.Dict); ok {
		if sd, ok := d.Get("state_dict"); ok {
			if _, isDict := sd.(*torchfile.Dict); isDict {
				var ferr error
				d.Entries(func(k, v any) bool {
					if k == "state_dict" {
						return true
					}
					var ls []string
					if ls, ferr = describeValue(fmt.Sprint(k), v); ferr == nil {
						leaves = append(leaves, ls...)
					}
					return ferr == nil
				})
				if ferr != nil {
					tf.Close()
					return nil, nil, nil, fmt.Errorf("convert: %s: %w", path, ferr)
				}
				root = sd
			}
		}
	}
	named, ls, err := torchfile.Flatten(root)
	if err != nil {
		tf.Close()
		return nil, nil, nil, fmt.Errorf("convert: %s: %w", path, err)
	}
	leaves = append(leaves, describeLeaves(ls)...)
	refs := make([]*tensorRef, len(named))
	for i, n := range named {
		t := n.Tensor
		refs[i] = &tensorRef{key: n.Key, dtype: string(t.DType), shape: t.Shape, file: sf, read: t.Bytes}
	}
	return sf, refs, leaves, nil
}

// describeValue describes a checkpoint entry that is not the state dict:
// its tensors by shape, its other values as they are.
func describeValue(key string, v any) ([]string, error) {
	if t, ok := v.(*torchfile.Tensor); ok {
		return []string{fmt.Sprintf("%s = tensor %v", key, t.Shape)}, nil
	}
	ts, ls, err := torchfile.Flatten(v)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range ts {
		out = append(out, fmt.Sprintf("%s.%s = tensor %v", key, t.Key, t.Tensor.Shape))
	}
	for i := range ls {
		if ls[i].Key == "(root)" {
			ls[i].Key = key
		} else {
			ls[i].Key = key + "." + ls[i].Key
		}
	}
	return append(out, describeLeaves(ls)...), nil
}

func describeLeaves(ls []torchfile.Leaf) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		v := fmt.Sprint(l.Value)
		switch x := l.Value.(type) {
		case *torchfile.Object:
			v = x.Class.String() + " object"
		case string:
			v = fmt.Sprintf("%q", x)
		case nil:
			v = "None"
		}
		if len(v) > 100 {
			v = v[:97] + "..."
		}
		out[i] = l.Key + " = " + v
	}
	return out
}
