package spec

import (
	"errors"
	"slices"
	"testing"
)

// TestErrorsInBlocksNameTheirUses: a problem inside a block names the use
// (and, nested, the uses) it happened in, and one problem met in several
// uses is one error listing each use, not one error per use.
func TestErrorsInBlocksNameTheirUses(t *testing.T) {
	const lib = `refiners: 1
blocks:
  Norm:
    params: {channels: null, groups: 5}
    layers:
      - GroupNorm: {channels: "${channels}", num_groups: "${groups}"}
  Stage:
    params: {width: null}
    layers:
      - Norm: {channels: "${width}"}
`
	for _, c := range []struct {
		name   string
		layers string
		want   []*Error // File, Line, Col, Code, Uses compared
	}{
		{"one use", "  - Norm: {channels: 16}\n", []*Error{
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:12:5 (channels=16, groups=5)"}}}},
		{"same problem in two uses", "  - Norm: {channels: 16}\n  - Norm: {channels: 20}\n  - Norm: {channels: 16}\n", []*Error{
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:12:5 (channels=16, groups=5)", "Norm at x.yaml:14:5 (channels=16, groups=5)"}}}},
		{"different problems in two uses", "  - Norm: {channels: 16}\n  - Norm: {channels: 12}\n", []*Error{
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:12:5 (channels=16, groups=5)"}},
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:13:5 (channels=12, groups=5)"}}}},
		{"nested uses", "  - Stage: {width: 16}\n  - Stage: {width: 32}\n", []*Error{
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:10:9 (channels=16, groups=5), in Stage at x.yaml:12:5 (width=16)"}},
			{Line: 6, Col: 9, Code: CodeBadLayer, Uses: []string{"Norm at x.yaml:10:9 (channels=32, groups=5), in Stage at x.yaml:13:5 (width=32)"}}}},
		{"a bad use is the caller's error", "  - Norm: {chanels: 16}\n", []*Error{
			{Line: 12, Col: 12, Code: CodeUnknownArg}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte(lib+"layers:\n"+c.layers))
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Build(nil)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want coded errors, got %v", err)
			}
			if len(errs) != len(c.want) {
				t.Fatalf("%d errors, want %d:\n%v", len(errs), len(c.want), errs)
			}
			for i, w := range c.want {
				e := errs[i]
				if e.Line != w.Line || e.Col != w.Col || e.Code != w.Code || !slices.Equal(e.Uses, w.Uses) {
					t.Errorf("error %d:\n%v\nwant %s at %d:%d in %q", i, e, w.Code, w.Line, w.Col, w.Uses)
				}
			}
		})
	}
}
