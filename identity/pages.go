package identity

import (
	"bytes"
	"html/template"
	"net/http"
)

// pageData fills the authorization server's pages.
type pageData struct {
	Request, CSRF string
	Client        string
	ClientID      string
	User          string
	Scopes        []string
	Redirect      string
	Problem       string
	Message       string
	// Passwords shows the local sign-in form; Providers the federated
	// providers' buttons.
	Passwords bool
	Providers []providerButton
}

type providerButton struct{ Name, Label string }

var pages = template.Must(template.New("").Parse(`
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>SAG sign-in</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#1b1f24}
h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}
button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.problem{color:#b00020}code{word-break:break-all}
</style></head><body>{{end}}
{{define "signin"}}{{template "head"}}
<h1>Sign in to SAG</h1>
<p><strong>{{.Client}}</strong> wants to act for you at this gateway.</p>
{{if .Problem}}<p class="problem" role="alert">{{.Problem}}</p>{{end}}
{{range .Providers}}<form method="post" action="/oauth/authorize">
<input type="hidden" name="request" value="{{$.Request}}"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="provider" value="{{.Name}}">
<button type="submit" name="action" value="federate">Sign in with {{.Label}}</button>
</form>{{end}}
{{if .Passwords}}<form method="post" action="/oauth/authorize">
<input type="hidden" name="request" value="{{.Request}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<label for="username">Name</label><input id="username" name="username" type="text" autocomplete="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" name="action" value="signin">Sign in</button>
</form>{{end}}</body></html>{{end}}
{{define "consent"}}{{template "head"}}
<h1>Allow {{.Client}}?</h1>
<p>Signed in as <strong>{{.User}}</strong>.</p>
<p>The client <strong>{{.Client}}</strong> (<code>{{.ClientID}}</code>) wants to act for you at SAG{{if .Scopes}} with the scopes{{range .Scopes}} <code>{{.}}</code>{{end}}{{end}}.
After you decide you will be sent back to <strong>{{.Redirect}}</strong>.</p>
<p>Every call it makes stays under your allow-lists, and you can end its access at any time from the console.</p>
<form method="post" action="/oauth/authorize">
<input type="hidden" name="request" value="{{.Request}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<button type="submit" name="action" value="approve">Allow</button><button type="submit" name="action" value="deny">Deny</button>
</form></body></html>{{end}}
{{define "error"}}{{template "head"}}
<h1>Sign-in stopped</h1><p class="problem" role="alert">{{.Message}}</p></body></html>{{end}}
`))

// Page names.
const (
	signInPage  = "signin"
	consentPage = "consent"
	errorPage   = "error"
)

// page renders one of the pages with the headers every page of the
// authorization endpoint carries: never cached, never framed (clickjacking
// on the consent page), no referrer to other sites, no script.
func (s *AuthServer) page(w http.ResponseWriter, status int, name string, d pageData) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, d); err != nil {
		s.log.Error("authorization page failed", "page", name, "error", err)
		http.Error(w, "page unavailable", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	// same-origin, not no-referrer: with no-referrer browsers send the
	// forms with Origin: null, which the origin check refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func (s *AuthServer) errorPage(w http.ResponseWriter, status int, msg string) {
	s.page(w, status, errorPage, pageData{Message: msg})
}
