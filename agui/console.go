package agui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed console
var consoleFiles embed.FS

// ConsoleCSP is the consent console's Content-Security-Policy: its own
// scripts, styles and requests only, no inline code, no framing.
const ConsoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Console serves the consent console's static files under /console/. The
// page is an AG-UI client of POST /agui: it signs in, follows the user's
// consent stream and answers interrupts (console/app.js).
func Console() http.Handler {
	sub, _ := fs.Sub(consoleFiles, "console") // the directory is embedded
	files := http.StripPrefix("/console/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ConsoleCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
