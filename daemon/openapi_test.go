package daemon

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// handlerRoutes returns the "METHOD /path" patterns Handler registers, read
// from the route(...) calls in server.go so that the list is not repeated.
func handlerRoutes(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "server.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var handler *ast.FuncDecl
	for _, decl := range f.Decls {
		if fd, ok := decl.(*ast.FuncDecl); ok && fd.Name.Name == "Handler" && fd.Recv != nil {
			handler = fd
		}
	}
	if handler == nil {
		t.Fatal("server.go: no Handler method")
	}
	var routes []string
	ast.Inspect(handler.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		if id, ok := call.Fun.(*ast.Ident); !ok || id.Name != "route" || len(call.Args) != 2 {
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			t.Fatalf("%v: route pattern is not a string literal", fset.Position(call.Pos()))
		}
		p, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Fatal(err)
		}
		// "/{$}" is Go's pattern for exactly "/".
		routes = append(routes, strings.Replace(p, "/{$}", "/", 1))
		return true
	})
	if len(routes) < 10 {
		t.Fatalf("server.go: found only %d routes in Handler: %v", len(routes), routes)
	}
	return routes
}

// TestOpenAPIRoutes checks that docs/openapi.yaml documents exactly the
// routes Handler serves, and that its schema references resolve.
func TestOpenAPIRoutes(t *testing.T) {
	b, err := os.ReadFile("../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI    string                               `yaml:"openapi"`
		Paths      map[string]map[string]yaml.Node      `yaml:"paths"`
		Components map[string]map[string]map[string]any `yaml:"components"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi.yaml: openapi %q, want 3.1.x", doc.OpenAPI)
	}
	methods := map[string]bool{"get": true, "put": true, "post": true, "delete": true, "patch": true, "head": true, "options": true, "trace": true}
	var documented []string
	for path, item := range doc.Paths {
		for key := range item {
			if methods[key] {
				documented = append(documented, strings.ToUpper(key)+" "+path)
			}
		}
	}
	served := handlerRoutes(t)
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if _, found := slices.BinarySearch(documented, r); !found {
			t.Errorf("route %s is served but not in docs/openapi.yaml", r)
		}
	}
	for _, r := range documented {
		if _, found := slices.BinarySearch(served, r); !found {
			t.Errorf("docs/openapi.yaml documents %s, which Handler does not serve", r)
		}
	}

	// Every local $ref must name a component.
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "$ref" {
					parts := strings.Split(strings.TrimPrefix(s, "#/components/"), "/")
					if !strings.HasPrefix(s, "#/components/") || len(parts) != 2 || doc.Components[parts[0]][parts[1]] == nil {
						t.Errorf("openapi.yaml: $ref %q does not resolve", s)
					}
					continue
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var all any
	if err := yaml.Unmarshal(b, &all); err != nil {
		t.Fatal(err)
	}
	walk(all)
}
