package daemon

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

func TestWebPage(t *testing.T) {
	const token = "0123456789abcdef0123"
	for _, auth := range []bool{false, true} {
		td := newTestDaemon(t, func(c *Config) {
			if auth {
				c.Token = token
			}
		})
		for _, tc := range []struct {
			path, method string
			code         int
			ctype        string // prefix
			body         string // substring
		}{
			{"/", "GET", 200, "text/html", `<script src="/web/app.js"`},
			{"/web/index.html", "GET", 200, "text/html", "<title>refinersd</title>"},
			{"/web/app.js", "GET", 200, "text/javascript", "/v1/images/jobs"},
			{"/web/app.css", "GET", 200, "text/css", ":root"},
			{"/web/favicon.svg", "GET", 200, "image/svg+xml", "<svg"},
			{"/web/missing.js", "GET", 404, "application/json", "not found"},
			{"/web/%2e%2e%2fserver.go", "GET", 400, "application/json", "dot segments"},
			{"/nothing-here", "GET", 404, "", ""},
			{"/", "POST", 405, "", ""},
		} {
			req, err := http.NewRequest(tc.method, td.srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			code := tc.code
			if auth && tc.code != 200 && tc.code != 400 && !strings.HasPrefix(tc.path, "/web/") {
				code = 401 // outside the page's files, the token comes first
			}
			name := tc.method + " " + tc.path
			if auth {
				name += " (token set)"
			}
			if res.StatusCode != code {
				t.Errorf("%s: status %d, want %d (%s)", name, res.StatusCode, code, b)
				continue
			}
			if code != tc.code {
				continue
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("%s: Content-Type %q, want %s", name, ct, tc.ctype)
			}
			if !strings.Contains(string(b), tc.body) {
				t.Errorf("%s: body lacks %q", name, tc.body)
			}
			if code == 200 {
				if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
					t.Errorf("%s: Content-Security-Policy %q", name, csp)
				}
				if res.Header.Get("X-Content-Type-Options") != "nosniff" {
					t.Errorf("%s: no X-Content-Type-Options: nosniff", name)
				}
			}
		}
		if auth {
			// The page is public; the API behind it is not.
			res, err := http.Get(td.srv.URL + "/v1/adapters")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 401 {
				t.Errorf("GET /v1/adapters without the token: %d, want 401", res.StatusCode)
			}
		}
	}
}

// TestWebFilesSelfContained checks that the page works offline: every file
// it links is embedded, and nothing is fetched from another origin.
func TestWebFilesSelfContained(t *testing.T) {
	entries, err := webFiles.ReadDir("web")
	if err != nil {
		t.Fatal(err)
	}
	embedded := map[string]bool{}
	for _, e := range entries {
		embedded[e.Name()] = true
	}
	for _, want := range []string{"index.html", "app.js", "app.css"} {
		if !embedded[want] {
			t.Errorf("web/%s is not embedded", want)
		}
	}
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	link := regexp.MustCompile(`(?:src|href)="([^"#]+)"`)
	for name := range embedded {
		b, err := webFiles.ReadFile("web/" + name)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		if name == "favicon.svg" {
			src = strings.Replace(src, `xmlns="http://www.w3.org/2000/svg"`, "", 1) // a namespace, not a fetch
		}
		if m := external.FindString(src); m != "" {
			t.Errorf("web/%s refers to another origin: %q", name, m)
		}
		for _, m := range link.FindAllStringSubmatch(src, -1) {
			p, ok := strings.CutPrefix(m[1], "/web/")
			if !ok || !embedded[p] {
				t.Errorf("web/%s links %q, which is not an embedded /web/ file", name, m[1])
			}
		}
	}
}
