package hosts

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/internal/names"
	_ "github.com/refiners-go/refiners/models/all" // layer types of the specs insert patches build
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// CheckResult is one conformance check of a plugin binary.
type CheckResult struct {
	Name   string
	Passed bool
	Detail string
}

var semver = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// Check runs the plugin conformance kit against a binary: it installs the
// binary into a scratch plugins directory and exercises the protocol
// contract — handshake, description, well-formed plans for the plugin's
// own examples, errors (not crashes or hangs) for bad input, and
// concurrent calls. It never changes an installed set of plugins.
func Check(ctx context.Context, binary string) ([]CheckResult, error) {
	dir, err := os.MkdirTemp("", "refiners-check-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	h, err := New(dir, Options{CallTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var results []CheckResult
	add := func(name string, err error) bool {
		r := CheckResult{Name: name, Passed: err == nil}
		if err != nil {
			r.Detail = err.Error()
		}
		results = append(results, r)
		return err == nil
	}

	e, err := h.Install(ctx, binary)
	if !add("handshake: starts, negotiates protocol 1 over gRPC with mTLS, and describes itself", err) {
		return results, nil
	}
	d, err := h.Describe(ctx, e.Name)
	if !add("describe answers", err) {
		return results, nil
	}
	add("description: name, semantic version, protocol, operations", checkDescription(d))
	for _, lt := range d.LayerTypes {
		add(fmt.Sprintf("layer type %q: its spec defines the block", lt.Name), checkLayerType(d.Name, lt))
	}
	for _, op := range d.Operations {
		add(fmt.Sprintf("operation %q: params_schema is a JSON Schema object", op.Name), checkSchema(op.ParamsSchema))
		if op.Example == nil {
			add(fmt.Sprintf("operation %q: has an example request", op.Name), fmt.Errorf("no example: the kit cannot check that its plans are well-formed"))
			continue
		}
		req := *op.Example
		req.Operation = op.Name
		resp, err := h.Plan(ctx, e.Name, &req)
		if err == nil {
			err = checkPlan(resp, &req)
		}
		add(fmt.Sprintf("operation %q: its example plans, and the plan is well-formed", op.Name), err)
	}
	bad := []struct {
		what string
		req  *sdk.PlanRequest
	}{
		{"an unknown operation", &sdk.PlanRequest{Operation: "no-such-operation-" + e.Name}},
		{"parameters that are not JSON", &sdk.PlanRequest{Operation: firstOp(d), Params: "{not json"}},
		{"parameters of the wrong shape", &sdk.PlanRequest{Operation: firstOp(d), Params: `[1, 2, 3]`}},
		{"an empty model and no files", &sdk.PlanRequest{Operation: firstOp(d), Params: `{}`}},
	}
	for _, b := range bad {
		name := "rejects " + b.what + " with InvalidArgument"
		resp, err := h.Plan(ctx, e.Name, b.req)
		switch code := sdk.CodeOf(err); {
		case code == codes.Unavailable:
			add(name, fmt.Errorf("the plugin crashed: %v", err))
		case code == codes.DeadlineExceeded:
			add(name, fmt.Errorf("the plugin hung: %v", err))
		case err == nil && len(resp.Patches) > 0:
			add(name, fmt.Errorf("it answered with %d patches", len(resp.Patches)))
		case err == nil:
			add(name, fmt.Errorf("it answered without an error (an empty plan)"))
		case code != sdk.InvalidArgument:
			add(name, fmt.Errorf("it answered with code %v (%v); bad input is InvalidArgument (sdk.Errorf), which a daemon answers with 400", code, err))
		default:
			add(name, nil)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.Describe(ctx, e.Name); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	add("answers 8 concurrent calls", <-errs)
	return results, nil
}

func firstOp(d *sdk.Description) string {
	if len(d.Operations) > 0 {
		return d.Operations[0].Name
	}
	return "apply"
}

func checkDescription(d *sdk.Description) error {
	var problems []string
	if err := names.Check("plugin", d.Name); err != nil {
		problems = append(problems, err.Error())
	}
	if !semver.MatchString(d.Version) {
		problems = append(problems, fmt.Sprintf("version %q is not a semantic version", d.Version))
	}
	if d.Protocol != sdk.ProtocolVersion {
		problems = append(problems, fmt.Sprintf("protocol %d, want %d", d.Protocol, sdk.ProtocolVersion))
	}
	if len(d.Operations) == 0 {
		problems = append(problems, "no operations")
	}
	seen := map[string]bool{}
	for _, op := range d.Operations {
		if !names.Valid(op.Name) || seen[op.Name] {
			problems = append(problems, fmt.Sprintf("operation name %q is invalid or repeated", op.Name))
		}
		seen[op.Name] = true
	}
	for _, lt := range d.LayerTypes {
		if !names.Valid(strings.ToLower(lt.Name)) || lt.Spec == "" {
			problems = append(problems, fmt.Sprintf("layer type %q needs a name and a spec", lt.Name))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// checkLayerType parses a contributed layer type's spec as a block library
// and builds a model made of that block with its defaults.
func checkLayerType(plugin string, lt sdk.LayerType) error {
	use := fmt.Sprintf("refiners: 1\nlayers:\n  - %s/%s\n", plugin, lt.Name)
	s, err := spec.Parse("kit", []byte(use))
	if err != nil {
		return err
	}
	if err := s.AddLibrary(plugin, "layer type "+lt.Name, []byte(lt.Spec)); err != nil {
		return err
	}
	_, err = s.Build(nil)
	return err
}

func checkSchema(s string) error {
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return fmt.Errorf("params_schema is not a JSON object: %v", err)
	}
	if _, ok := v["type"]; !ok {
		return fmt.Errorf("params_schema has no \"type\"")
	}
	return nil
}

// checkPlan checks that every patch targets a layer of the request's model,
// has a branch the host can build, and binds keys that the request's files
// have to parameters the branch has.
func checkPlan(resp *sdk.Plan, req *sdk.PlanRequest) error {
	if resp.Report == nil {
		return fmt.Errorf("the plan has no report")
	}
	layers := map[string]bool{}
	for _, l := range req.Model {
		layers[l.Path] = true
	}
	keys := map[string]map[string]bool{}
	for _, f := range req.Files {
		keys[f.ID] = map[string]bool{}
		for _, t := range f.Tensors {
			keys[f.ID][t.Key] = true
		}
	}
	for i, p := range resp.Patches {
		insert := p.Kind == adapt.InsertKind
		if !layers[p.Target] && !(insert && isChain(p.Target, req.Model)) {
			return fmt.Errorf("patch %d targets %q, which is not in the model", i, p.Target)
		}
		desc, err := adapt.BranchDescription(p.Branch)
		if err != nil {
			return fmt.Errorf("patch %d: %v", i, err)
		}
		var branch core.Module
		if insert {
			// A sub-model added as a child of a chain (adapt, insert.go).
			branch, err = adapt.BuildInsertBranch(desc)
		} else {
			branch, err = core.BuildLayer(desc)
		}
		if err != nil {
			return fmt.Errorf("patch %d: branch: %v", i, err)
		}
		params := map[string]bool{}
		for _, e := range core.StateDict(branch) {
			params[e.Key] = true
		}
		for _, b := range p.Bindings {
			if !keys[b.File][b.Key] {
				return fmt.Errorf("patch %d binds %s[%s], which the request's files do not have", i, b.File, b.Key)
			}
			if !params[b.Param] {
				return fmt.Errorf("patch %d binds parameter %q, which its branch does not have", i, b.Param)
			}
		}
	}
	return nil
}

// isChain says whether path is a chain of the summarised model: its root
// ("") or a proper prefix of a weighted layer's path.
func isChain(path string, model []sdk.Layer) bool {
	if path == "" { // the root, even of an empty model (a plugin that builds models into it)
		return true
	}
	for _, l := range model {
		if path == "" || strings.HasPrefix(l.Path, path+".") {
			return true
		}
	}
	return false
}
