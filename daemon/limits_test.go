package daemon

import (
	"encoding/json"
	"strings"
	"testing"
)

// deepSpec is a legal spec whose tree is depth levels deep (a block
// recursing with a decreasing parameter).
const deepSpec = `refiners: 1
params: {depth: 10}
blocks:
  R:
    params: {n: 1}
    layers: [Identity, {R: {n: "${n-1}", repeat: "${n > 0}"}}]
layers: [{R: {n: "${depth}"}}]
`

func TestModelViewIsBounded(t *testing.T) {
	td := newTestDaemon(t, nil)
	td.addModel(t, "deep", deepSpec, "", map[string]string{"depth": "3000"})
	code, body := td.do(t, "GET", "/v1/models/deep", "", nil)
	if code != 200 {
		t.Fatalf("GET: %d %s", code, body)
	}
	if len(body) > 2<<20 {
		t.Fatalf("the model view of a 3000-deep model is %d bytes", len(body))
	}
	var info struct {
		Tree          string `json:"tree"`
		TreeTruncated bool   `json:"tree_truncated"`
	}
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	if !info.TreeTruncated || strings.Count(info.Tree, "\n") != maxTreeLines || !strings.HasSuffix(info.Tree, "more lines)") {
		t.Errorf("tree_truncated=%v with %d lines", info.TreeTruncated, strings.Count(info.Tree, "\n"))
	}
	for q, want := range map[string]int{"?tree_depth=2": 200, "?tree_depth=-1": 400, "?tree_depth=x": 400} {
		code, body := td.do(t, "GET", "/v1/models/deep"+q, "", nil)
		if code != want {
			t.Errorf("GET %s: %d, want %d: %s", q, code, want, body)
		}
		info.TreeTruncated = false
		if want == 200 && json.Unmarshal(body, &info) == nil && (info.TreeTruncated || strings.Count(info.Tree, "\n") > 5) {
			t.Errorf("GET %s: tree of %d lines:\n%s", q, strings.Count(info.Tree, "\n"), info.Tree)
		}
	}
}
