package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// writeZeros writes a safetensors file of float32 zeros of the given shapes.
func writeZeros(t *testing.T, path string, shapes map[string][]int64) string {
	t.Helper()
	tensors := map[string]weights.Raw{}
	for k, shape := range shapes {
		n := int64(4)
		for _, d := range shape {
			n *= d
		}
		tensors[k] = weights.Raw{DType: tensor.Float32, Shape: shape, Data: make([]byte, n)}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := weights.Encode(f, tensors, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// installPlugins builds plugins (name -> package) and installs them.
func (td *testDaemon) installPlugins(t *testing.T, pkgs map[string]string) {
	t.Helper()
	for name, pkg := range pkgs {
		bin := filepath.Join(td.dir, name)
		if msg, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, msg)
		}
		if _, err := td.d.host.Install(context.Background(), bin); err != nil {
			t.Fatal(err)
		}
	}
}

const linearSpec = "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8}\n"

// TestPluginBadInputIs400: a plugin that rejects its input with
// InvalidArgument (sdk.Errorf) makes the daemon answer 400, through the
// real plugin binaries.
func TestPluginBadInputIs400(t *testing.T) {
	td := newTestDaemon(t, nil)
	td.installPlugins(t, map[string]string{"example": "../plugins/example", "lora": "../plugins/lora"})
	w := writeZeros(t, filepath.Join(td.dir, "linear.safetensors"), map[string][]int64{"Linear.weight": {8, 4}, "Linear.bias": {8}})
	td.addModel(t, "lin", linearSpec, w, nil)
	lora := writeZeros(t, filepath.Join(td.dir, "ex.safetensors"), map[string][]int64{"down": {2, 4}, "up": {8, 2}})
	if _, err := td.d.store.AddAdapter("ex", lora); err != nil {
		t.Fatal(err)
	}
	m, err := td.d.store.Model("lin")
	if err != nil {
		t.Fatal(err)
	}
	const input = `"inputs":{"input.0":{"dtype":"float32","shape":[1,4],"data":[1,2,3,4]}}`
	for _, c := range []struct {
		name, adapter string
		want          int
		msg           string
	}{
		{"a good plan", `{"plugin":"example","file":"ex","params":{"target":"Linear","file":"file0","down":"down","up":"up"}}`, 200, `"output.0"`},
		{"bad parameters", `{"plugin":"example","file":"ex","params":{"target":"Linear"}}`, 400, "want {target, file, down, up"},
		{"an unknown operation", `{"plugin":"example","file":"ex","operation":"nope"}`, 400, `unknown operation`},
		{"keys that are not a pair", `{"plugin":"example","file":"ex","params":{"target":"Linear","file":"file0","down":"up","up":"down"}}`, 400, "are not a down"},
		{"a file that is not a LoRA", `{"plugin":"lora","file":"` + m.Weights.Digest + `"}`, 400, "no known LoRA layout"},
	} {
		code, body := td.post(t, "/v1/run", `{"model":"lin",`+input+`,"adapters":[`+c.adapter+`]}`)
		if code != c.want || !strings.Contains(string(body), c.msg) {
			t.Errorf("%s: %d %s; want %d %q", c.name, code, body, c.want, c.msg)
		}
	}
}
