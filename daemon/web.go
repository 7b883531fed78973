package daemon

import (
	"embed"
	"fmt"
	"mime"
	"net/http"
	"path"
	"strings"
)

// The web page: plain HTML, CSS and JavaScript, embedded so the binary
// serves it offline with no build step. It talks to the API like any other
// client (the token it needs is typed into the page, never served).
//
//go:embed web/index.html web/app.css web/app.js web/favicon.svg
var webFiles embed.FS

// webPolicy keeps the page to its own files: scripts and styles only from
// the daemon, images from the daemon or data:/blob: URLs (results and
// previews arrive as base64), no framing.
const webPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

// webPath says whether a request path is the page or one of its files,
// which are served without the bearer token (they hold no secret; the
// page asks for the token and sends it with its API calls).
func webPath(p string) bool {
	return p == "/" || strings.HasPrefix(p, "/web/")
}

func (d *Daemon) webIndex(w http.ResponseWriter, r *http.Request) {
	d.serveWebFile(w, "index.html")
}

func (d *Daemon) webAsset(w http.ResponseWriter, r *http.Request) {
	d.serveWebFile(w, r.PathValue("file"))
}

func (d *Daemon) serveWebFile(w http.ResponseWriter, name string) {
	b, err := webFiles.ReadFile("web/" + name)
	if err != nil || strings.Contains(name, "/") {
		writeError(w, http.StatusNotFound, fmt.Errorf("web file %q: not found", name))
		return
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Security-Policy", webPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// The files change with the binary: revalidate rather than keep a
	// stale script after an upgrade.
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}
