package conformance

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sam"
	"github.com/refiners-go/refiners/spec"
)

// TestSAMDensePositionalEmbedding checks sam.DensePositionalEmbedding
// (Refiners' PointEncoder.get_dense_positional_embedding) on the point
// encoder spec with the reference's weights.
func TestSAMDensePositionalEmbedding(t *testing.T) {
	path := "testdata/sam/dense_positional_embedding.safetensors"
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var overrides map[string]string
	if err := json.Unmarshal([]byte(f.Metadata()["overrides"]), &overrides); err != nil {
		t.Fatalf("%s: overrides: %v", path, err)
	}
	side, err := strconv.ParseInt(f.Metadata()["side"], 10, 64)
	if err != nil {
		t.Fatalf("%s: side: %v", path, err)
	}
	sp, err := spec.Load("../specs/sam_point_encoder.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := sp.Build(overrides)
	if err != nil {
		t.Fatal(err)
	}
	var d Diff
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, m, f, core.LoadOptions{Strict: true, Prefix: "param."}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		got, err := sam.DensePositionalEmbedding(s, m, side, side)
		if err != nil {
			return err
		}
		ref, err := ReadReference(f, "output.0")
		if err != nil {
			return err
		}
		d = ref.Check(s, got)
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Pass {
		t.Errorf("dense positional embedding: %s", d)
	}
	publishReport(t, reportHeader("SAM")+reportRow("dense_positional_embedding", "0", d)+"\n")
}
