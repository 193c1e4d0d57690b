package policy

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sag-gateway/sag/schemas"
)

// Fake credentials are assembled at run time so that secret scanners do not
// flag this file; none of them is real.
var (
	fakeJWT = b64url(`{"alg":"HS256","typ":"JWT"}`) + "." +
		b64url(`{"sub":"1234567890","name":"John Doe","iat":1516239022}`) + "." +
		"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	fakeJWE = b64url(`{"alg":"RSA-OAEP","enc":"A256GCM"}`) + "." +
		"OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGe" + "." +
		"48V1_ALb6US04U3b" + "." + "5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6ji" + "." +
		"XFBoMYUZodetZdvTiFvSkQ"
	fakeUnsignedJWT = b64url(`{"alg":"none"}`) + "." + b64url(`{"sub":"admin"}`) + "."
	fakePEM         = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----"
	fakeAWSKeyID    = "AKIA" + "IOSFODNN7EXAMPLE"
	fakeAWSSecret   = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
	fakeAWSSession  = "FwoGZXIvYXdzE" + strings.Repeat("Ab3+/", 20)
	fakeGCPKey      = "AIza" + "SyD" + strings.Repeat("-x9Q", 8)
	fakeGitHub      = "ghp_" + strings.Repeat("aB3d", 9)
	fakeGitHubPAT   = "github_" + "pat_11ABCDEFG0" + strings.Repeat("x", 12) + "_" + strings.Repeat("Ab1", 20)
	fakeSlack       = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
	fakeSlackHook   = "https://hooks.slack.com/" + "services/T00000000/B00000000/" + strings.Repeat("X", 24)
	fakeStripe      = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
	fakeSKKey       = "sk-" + "proj-" + strings.Repeat("Ab3dEf9h", 6)
	fakeBearer      = "mF_9.B5f-4.1JqM" + "9xQ2pL7vR4tW"
)

func b64url(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// cardNumber completes prefix with zeros and a Luhn check digit to n digits.
func cardNumber(prefix string, n int) string {
	d := []byte(prefix + strings.Repeat("0", n-len(prefix)))
	for c := byte('0'); c <= '9'; c++ {
		d[n-1] = c
		if luhn(d) {
			return string(d)
		}
	}
	panic("unreachable")
}

func mustDLP(t testing.TB, p DLPProfile) *Redactor {
	t.Helper()
	r, err := CompileDLP("test", p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func actionStrings(as []DLPAction) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

func TestDLPBuiltinsRedact(t *testing.T) {
	tests := []struct {
		builtin, in, want string
		rules             []string // default: the one rule of want
	}{
		// private_keys
		{"private_keys", "key:\n" + fakePEM + "\nend", "key:\n[REDACTED:private_key]\nend", nil},
		{"private_keys", "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----", "[REDACTED:private_key]", nil},
		{"private_keys", "-----BEGIN " + "ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----", "[REDACTED:private_key]", nil},
		{"private_keys", "-----BEGIN " + "PGP PRIVATE KEY BLOCK-----\n\nlQOYBF5\n-----END PGP PRIVATE KEY BLOCK-----!", "[REDACTED:private_key]!", nil},
		{"private_keys", `{"key":"-----BEGIN ` + `EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----"}`, `{"key":"[REDACTED:private_key]"}`, nil},
		{"private_keys", "cut: -----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF (truncated)", "cut: [REDACTED:private_key](truncated)", nil},
		// jwt
		{"jwt", "token " + fakeJWT + " end", "token [REDACTED:jwt] end", nil},
		{"jwt", "id_token=" + fakeJWT + "&state=x", "id_token=[REDACTED:jwt]&state=x", nil},
		{"jwt", "Your token is " + fakeJWT + ".", "Your token is [REDACTED:jwt].", nil},
		{"jwt", "jwe " + fakeJWE, "jwe [REDACTED:jwt]", nil},
		{"jwt", "unsigned " + fakeUnsignedJWT + " ok", "unsigned [REDACTED:jwt] ok", nil},
		{"jwt", fakeJWT + ".more.text", "[REDACTED:jwt].more.text", nil},
		// cloud_keys
		{"cloud_keys", "AWS_ACCESS_KEY_ID=" + fakeAWSKeyID, "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key_id]", nil},
		{"cloud_keys", "id ASIA" + "Y34FZKBOKMUTVV7A.", "id [REDACTED:aws_access_key_id].", nil},
		{"cloud_keys", "aws_secret_access_key = " + fakeAWSSecret + "\n", "aws_secret_access_key = [REDACTED:aws_secret_access_key]\n", nil},
		{"cloud_keys", `"SecretAccessKey": "` + fakeAWSSecret + `"`, `"SecretAccessKey": "[REDACTED:aws_secret_access_key]"`, nil},
		{"cloud_keys", "AWS_SESSION_TOKEN=" + fakeAWSSession, "AWS_SESSION_TOKEN=[REDACTED:aws_session_token]", nil},
		{"cloud_keys", "key=" + fakeGCPKey + "&q=1", "key=[REDACTED:gcp_api_key]&q=1", nil},
		{"cloud_keys", "GITHUB_TOKEN=" + fakeGitHub, "GITHUB_TOKEN=[REDACTED:github_token]", nil},
		{"cloud_keys", "token: " + fakeGitHubPAT, "token: [REDACTED:github_token]", nil},
		{"cloud_keys", "slack " + fakeSlack + " x", "slack [REDACTED:slack_token] x", nil},
		{"cloud_keys", "hook: " + fakeSlackHook, "hook: https://hooks.slack.com/services/[REDACTED:slack_webhook]", nil},
		{"cloud_keys", "stripe " + fakeStripe, "stripe [REDACTED:stripe_key]", nil},
		{"cloud_keys", "OPENAI_API_KEY=" + fakeSKKey, "OPENAI_API_KEY=[REDACTED:api_key]", nil},
		{"cloud_keys", "key sk-" + "ant-api03-" + strings.Repeat("Zz9", 12), "key [REDACTED:api_key]", nil},
		// bearer_tokens
		{"bearer_tokens", "Authorization: Bearer " + fakeBearer, "Authorization: Bearer [REDACTED:bearer_token]", nil},
		{"bearer_tokens", "authorization: bearer abcdef0123456789abcdef", "authorization: bearer [REDACTED:bearer_token]", nil},
		{"bearer_tokens", "Authorization: DPoP QmFzZTY0VG9rZW5WYWx1ZQ==", "Authorization: DPoP [REDACTED:bearer_token]", nil},
		{"bearer_tokens", "curl -H 'Authorization: Bearer AbCdEfGhIjKlMnOpQr'", "curl -H 'Authorization: Bearer [REDACTED:bearer_token]'", nil},
		{"bearer_tokens", "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret!")), "Authorization: Basic [REDACTED:basic_auth]", nil},
		// url_passwords
		{"url_passwords", "postgres://app:hunter2@db.internal:5432/app", "postgres://app:[REDACTED:url_password]@db.internal:5432/app", nil},
		{"url_passwords", "REDIS_URL=redis://:p%40ss@cache:6379/0", "REDIS_URL=redis://:[REDACTED:url_password]@cache:6379/0", nil},
		{"url_passwords", "https://u:p@ss:w0rd@host.example/x?y=1", "https://u:[REDACTED:url_password]@host.example/x?y=1", nil},
		{"url_passwords", `dsn "app:hunter2@tcp(127.0.0.1:3306)/db"`, `dsn "app:[REDACTED:url_password]@tcp(127.0.0.1:3306)/db"`, nil},
		{"url_passwords", "amqp://guest:guest@[::1]:5672/", "amqp://guest:[REDACTED:url_password]@[::1]:5672/", nil},
		{"url_passwords", "a redis://:pw1@a/0,redis://:pw2@b", "a redis://:[REDACTED:url_password]@a/0,redis://:[REDACTED:url_password]@b", []string{"url_password", "url_password"}},
		{"url_passwords", "ftp://u:pw@host@ x", "ftp://u:[REDACTED:url_password]@host@ x", nil},
		// emails
		{"emails", "contact jane.doe+tag@example.co.uk today", "contact [REDACTED:email] today", nil},
		{"emails", "From: Bob <bob@mail.example.org>", "From: Bob <[REDACTED:email]>", nil},
		{"emails", "mailto:x_y@sub.domain.io.", "mailto:[REDACTED:email].", nil},
		{"emails", "a@example.com,b@example.com", "[REDACTED:email],[REDACTED:email]", []string{"email", "email"}},
		// card_numbers
		{"card_numbers", "card 4111 1111 1111 1111 exp 12/27", "card [REDACTED:card_number] exp 12/27", nil},
		{"card_numbers", "4111-1111-1111-1111", "[REDACTED:card_number]", nil},
		{"card_numbers", "pan=4111111111111111;", "pan=[REDACTED:card_number];", nil},
		{"card_numbers", "amex 3782 822463 10005", "amex [REDACTED:card_number]", nil},
		{"card_numbers", "diners 3056 930902 5904", "diners [REDACTED:card_number]", nil},
		{"card_numbers", "5555555555554444", "[REDACTED:card_number]", nil},
		{"card_numbers", "mc2 2223003122003222", "mc2 [REDACTED:card_number]", nil},
		{"card_numbers", "disc 6011111111111117.", "disc [REDACTED:card_number].", nil},
		{"card_numbers", "jcb 3530111333300000", "jcb [REDACTED:card_number]", nil},
		{"card_numbers", "visa19 " + cardNumber("4", 19), "visa19 [REDACTED:card_number]", nil},
		{"card_numbers", "4111111111111111,5555555555554444", "[REDACTED:card_number],[REDACTED:card_number]", []string{"card_number", "card_number"}},
		{"card_numbers", "4111 1111 1111 1111 2027", "[REDACTED:card_number] 2027", nil},
		{"card_numbers", "ref 12 4111111111111111", "ref 12 [REDACTED:card_number]", nil},
	}
	for _, tt := range tests {
		t.Run(tt.builtin+"/"+tt.want, func(t *testing.T) {
			r := mustDLP(t, DLPProfile{Builtins: []string{tt.builtin}})
			got, actions := r.RedactString(tt.in)
			if got != tt.want {
				t.Errorf("RedactString(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
			rules := tt.rules
			if rules == nil {
				rule := tt.want[strings.Index(tt.want, "[REDACTED:")+len("[REDACTED:"):]
				rules = []string{rule[:strings.IndexByte(rule, ']')]}
			}
			var gotRules []string
			for _, a := range actions {
				gotRules = append(gotRules, a.Rule)
				if a.Pointer != "" {
					t.Errorf("action %v: RedactString's pointer is the root, \"\"", a)
				}
			}
			if !slices.Equal(gotRules, rules) {
				t.Errorf("rules %v, want %v", gotRules, rules)
			}
			// "all" finds at least as much.
			all, _ := mustDLP(t, DLPProfile{Builtins: []string{"all"}}).RedactString(tt.in)
			if all != tt.want {
				t.Errorf("with all: got %q, want %q", all, tt.want)
			}
		})
	}
}

// TestDLPFalsePositives lists strings that look like what a built-in
// detects but must stay as they are.
func TestDLPFalsePositives(t *testing.T) {
	tests := []struct {
		builtin string
		in      []string
	}{
		{"private_keys", []string{
			"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
			"-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUF\n-----END CERTIFICATE-----",
			"-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEA\n-----END RSA PUBLIC KEY-----",
			"store the private key in the vault; BEGIN PRIVATE KEY lines are PEM",
			"-----BEGIN PRIVATE KEY (no dashes)",
		}},
		{"jwt", []string{
			b64url(`{"a":1}`) + "." + b64url(`{"b":2}`) + ".c2ln", // JSON, but no "alg"
			b64url(`{"alg":"HS256"}`),                             // a header alone
			"eyJhbGciOiJIUzI1NiJ9",
			b64url(`{"alg":"HS256"}`) + ".bm90LWpzb24.c2ln", // payload not a JSON object
			"abc" + fakeJWT,                                 // continues a longer word
			"eyJ" + strings.Repeat("A", 40) + "." + "eyJ" + strings.Repeat("B", 40) + ".sig", // header is not JSON
			"data:application/json;base64,eyJuYW1lIjoiZm9vIn0=",
		}},
		{"cloud_keys", []string{
			"AKIA",
			"the AKIA prefix marks long-term keys",
			"AKIA" + "IOSFODNN7EXAMP",                                            // 14 characters after the prefix
			"X" + fakeAWSKeyID,                                                   // continues a word
			fakeAWSKeyID + "X",                                                   // continues a word
			strings.ToLower(fakeAWSKeyID),                                        // lower case
			"ASIA-PACIFIC region ASIA/TOKYO",                                     // a word
			"da39a3ee5e6b4b0d3255bfef95601890afd80709",                           // a git SHA, 40 characters, no label
			fakeAWSSecret,                                                        // the shape of a secret key, no label
			"aws_secret_access_key = " + fakeAWSSecret[:39],                      // too short
			"secret_access_key: " + fakeAWSSecret + "A",                          // too long
			"session_token: abc123def456",                                        // too short
			"ghp_short", "gho_" + strings.Repeat("a", 20), "github_pat_tooShort", // too short
			"AIzaSyShort",
			"xoxb-abcdefghijklmnop", // no digit
			"xoxb-123",
			"sk-learn", "pip install scikit-learn", "sk-" + strings.Repeat("aB3", 8), // short
			"sk-this-is-a-very-long-kebab-case-identifier-name", // lower case only
			"task-" + strings.Repeat("Ab3dEf9h", 6),             // "sk-" inside a word
			"sk_test_short", "risk_live_monitor", "desk_test_cases",
			"https://hooks.example.com/services/T000/B000/XXXX",
		}},
		{"bearer_tokens", []string{
			"the bearer of this letter is a friend",
			"Bearer tokens are described in RFC 6750.",
			"the bearer authentication-scheme-description is long",
			"token_type: Bearer",
			`{"token_type":"Bearer","expires_in":3600}`,
			"Authorization: Bearer short123",
			"Authorization: Bearer",
			"Bearer Internationalization",
			"DPoP proofs are JWTs; DPoP-bound access tokens",
			"a basic understanding of the protocol",
			"Basic configuration guide",
			"Basic " + base64.StdEncoding.EncodeToString([]byte("hello world")), // no user:password
		}},
		{"url_passwords", []string{
			"https://github.com/org/repo",
			"ssh://git@github.com/org/repo.git",
			"git@github.com:org/repo.git",
			"http://[::1]:8080/path",
			"http://host:8080/a@b",
			"https://user@example.com/",
			"http://user:****@host/", // already masked
			"http://user:@host/",     // empty password
			"mailto:jane@example.com",
			"see https://example.com/?q=a:b@c", // ":" and "@" after the path
			"time 10:30@home",
		}},
		{"emails", []string{
			"user@localhost",
			"a@b",
			"icon@2x.png and logo@3x.webp",
			"npm i react@18.2.0",
			"git@github.com:org/repo.git",
			"@username mentioned @other",
			"foo@bar.c",
			"image@sha256:e3b0c44298fc1c14",
			"user@host.c0m",
			"v1.2.3@beta",
			"a@b.com.2", // the domain goes on
			"me@example.com-x",
		}},
		{"card_numbers", []string{
			"1700000000000",               // Unix epoch in ms
			"1712345678901",               // Unix epoch in ms
			"1712345678",                  // Unix epoch
			"2024-01-15T10:30:00.123456Z", // timestamp
			"2024-01-15 10:30:00",
			"+1 415 555 2671", // phone numbers
			"+44 20 7946 0958",
			"+" + cardNumber("37", 15), // a phone number's "+", though Luhn-valid
			"(415) 555-2671",
			"978-0-306-40615-7", // ISBN-13
			"ISBN 9780306406157",
			"0-306-40615-2",          // ISBN-10
			"order 4111111111111112", // fails Luhn
			"1234 5678 9012 3456",    // no issuer starts with 1
			cardNumber("9", 16),      // no issuer starts with 9
			"pi 0.4111111111111111",  // a decimal's fraction
			"4111111111111111.5",     // a decimal
			"id4111111111111111",     // continues a word
			"4111111111111111x",
			"41111111111111111111",    // 20 digits
			cardNumber("4", 15),       // Visa has no 15-digit cards
			cardNumber("34", 16),      // Amex is 15 digits
			cardNumber("51", 15),      // Mastercard is 16 digits
			"4111-1111 1111-1111",     // mixed separators
			"41 11 11 11 11 11 11 11", // not card groups
			"4111  1111  1111  1111",  // double spaces
			"550e8400-e29b-41d4-a716-446655440000",
			"IBAN DE89370400440532013000",
			"1,234,567,890,123,456",
			"build 20240115103000123",
			"2019 2020 2021 2022",
		}},
		{"all", []string{
			"550e8400-e29b-41d4-a716-446655440000",
			"commit da39a3ee5e6b4b0d3255bfef95601890afd80709 (4b825dc)",
			"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
			"SGVsbG8sIFdvcmxkISBUaGlzIGlzIGEgYmFzZTY0IGJsb2Iu",
			"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
			"2024-01-15T10:30:00.123456789Z 1712345678 1700000000000",
			"v1.2.3 go1.26.8 1.0.0-rc.1+build.5 python3.12",
			"192.168.1.1:8080 fe80::1 00:1A:2B:3C:4D:5E",
			"https://example.com/path?q=1&r=2#frag",
			`C:\Users\me\file.txt`,
			"the bearer of the AKIA prefix said sk-learn",
			"user@localhost a@b",
			"price: 1234.5678901234567 EUR",
			"Authorization: Bearer",
			`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}`,
			"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
			"",
		}},
	}
	for _, tt := range tests {
		r := mustDLP(t, DLPProfile{Builtins: []string{tt.builtin}})
		all := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
		for _, in := range tt.in {
			if got, actions := r.RedactString(in); got != in || actions != nil {
				t.Errorf("%s redacted %q: %q %v", tt.builtin, in, got, actions)
			}
			if tt.builtin == "url_passwords" || tt.builtin == "cloud_keys" {
				continue // some hold an email, or a key another detector finds
			}
			if got, _ := all.RedactString(in); got != in {
				t.Errorf("all redacted %q: %q", in, got)
			}
		}
	}
}

func TestDLPOverlaps(t *testing.T) {
	all := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
	tests := []struct{ in, want string }{
		// Both jwt and bearer_tokens match the token: one replacement, the
		// earlier detector's.
		{"Authorization: Bearer " + fakeJWT, "Authorization: Bearer [REDACTED:jwt]"},
		// The password of a URL is not also an email.
		{"https://user:pass@example.com/x?to=jane@example.org", "https://user:[REDACTED:url_password]@example.com/x?to=[REDACTED:email]"},
		// A private key block swallows what it contains.
		{"-----BEGIN " + "PRIVATE KEY-----\njane@example.com 4111111111111111\n-----END PRIVATE KEY-----", "[REDACTED:private_key]"},
	}
	for _, tt := range tests {
		got, actions := all.RedactString(tt.in)
		if got != tt.want {
			t.Errorf("RedactString(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
		if n := strings.Count(tt.want, "[REDACTED:"); len(actions) != n {
			t.Errorf("%q: %d actions %v, want %d", tt.in, len(actions), actions, n)
		}
	}
}

func TestDLPPointers(t *testing.T) {
	r := mustDLP(t, DLPProfile{Pointers: []string{
		"/password", "/user/ssn", "/items/*/secret", "/a~1b", "/m~0n", "/list/1",
		"/missing/x", "/user/name/deeper", "/list/01", "/list/-", "/*/token",
	}})
	in := map[string]any{
		"password": "hunter2hunter2",
		"user":     map[string]any{"name": "Ann", "ssn": "123-45-6789"},
		"items": []any{
			map[string]any{"secret": "a", "keep": "b"},
			map[string]any{"secret": map[string]any{"nested": 1.0}},
			map[string]any{"other": "c"},
		},
		"a/b":   "slash",
		"m~n":   "tilde",
		"list":  []any{"p", "q", "r"},
		"svc":   map[string]any{"token": 42.0, "name": "x"},
		"extra": map[string]any{"token": nil},
	}
	want := map[string]any{
		"password": "[REDACTED:pointer]",
		"user":     map[string]any{"name": "Ann", "ssn": "[REDACTED:pointer]"},
		"items": []any{
			map[string]any{"secret": "[REDACTED:pointer]", "keep": "b"},
			map[string]any{"secret": "[REDACTED:pointer]"},
			map[string]any{"other": "c"},
		},
		"a/b":   "[REDACTED:pointer]",
		"m~n":   "[REDACTED:pointer]",
		"list":  []any{"p", "[REDACTED:pointer]", "r"},
		"svc":   map[string]any{"token": "[REDACTED:pointer]", "name": "x"},
		"extra": map[string]any{"token": "[REDACTED:pointer]"},
	}
	got, actions := r.Redact(in)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redact\n got %v\nwant %v", got, want)
	}
	wantActions := []string{
		"pointer@/a~1b", "pointer@/extra/token", "pointer@/items/0/secret", "pointer@/items/1/secret",
		"pointer@/list/1", "pointer@/m~0n", "pointer@/password", "pointer@/svc/token", "pointer@/user/ssn",
	}
	if g := actionStrings(actions); !slices.Equal(g, wantActions) {
		t.Errorf("actions\n got %v\nwant %v", g, wantActions)
	}

	// A pointer whose value is a string redacts its echoes elsewhere.
	got, actions = r.Redact(map[string]any{"password": "hunter2hunter2", "note": "it is hunter2hunter2!"})
	if n := got.(map[string]any)["note"]; n != "it is [REDACTED:pointer]!" {
		t.Errorf("echo: note = %q", n)
	}
	if g := actionStrings(actions); !slices.Equal(g, []string{"pointer@/note", "pointer@/password"}) {
		t.Errorf("echo: actions %v", g)
	}
	// A root string is not a member: pointers never match it.
	if s, a := r.RedactString("hunter2hunter2"); s != "hunter2hunter2" || a != nil {
		t.Errorf("RedactString: %q %v", s, a)
	}
}

func TestDLPPatterns(t *testing.T) {
	r := mustDLP(t, DLPProfile{Patterns: []DLPPattern{
		{Name: "employee_id", Regex: `\bEMP-\d{6}\b`},
		{Name: "password_kv", Regex: `(?i)password=(?P<secret>[^\s&]+)`},
		{Name: "maybe-empty", Regex: `x?\bQQ\b`},
	}})
	in := "login EMP-123456 with PASSWORD=abc123&next=1 EMP-12345 QQ"
	want := "login [REDACTED:employee_id] with PASSWORD=[REDACTED:password_kv]&next=1 EMP-12345 [REDACTED:maybe-empty]"
	got, actions := r.RedactString(in)
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if g := actionStrings(actions); !slices.Equal(g, []string{"employee_id@", "password_kv@", "maybe-empty@"}) {
		t.Errorf("actions %v", g)
	}
	// Patterns scan short strings and object keys too.
	got2, _ := r.Redact(map[string]any{"EMP-000001": "QQ"})
	if want := map[string]any{"[REDACTED:employee_id]": "[REDACTED:maybe-empty]"}; !reflect.DeepEqual(got2, want) {
		t.Errorf("keys: %v", got2)
	}
}

func TestCompileDLPErrors(t *testing.T) {
	long := strings.Repeat("a", maxDLPPatternLen+1)
	tests := []struct {
		p    DLPProfile
		want string
	}{
		{DLPProfile{Builtins: []string{"jwt", "nope"}}, `builtin "nope"`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "bad", Regex: `(`}}}, `pattern "bad": error parsing regexp`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "greedy", Regex: `a*`}}}, `pattern "greedy": regex "a*" matches the empty string`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "lookahead", Regex: `(?=x)`}}}, `pattern "lookahead"`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "huge", Regex: long}}}, `pattern "huge": regex is 1025 bytes, more than 1024`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "none", Regex: ""}}}, `pattern "none": regex is empty`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "twice", Regex: "a"}, {Name: "twice", Regex: "b"}}}, `pattern "twice": the name is used twice`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "email", Regex: "a"}}}, `pattern "email": the name is a built-in rule's`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "pointer", Regex: "a"}}}, `pattern "pointer"`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "has space", Regex: "a"}}}, `patterns[0]: name "has space"`},
		{DLPProfile{Patterns: []DLPPattern{{Name: "ok", Regex: "a"}, {Name: "", Regex: "a"}}}, `patterns[1]: name ""`},
		{DLPProfile{Pointers: []string{"/ok", "password"}}, `pointer "password": a JSON pointer starts with "/"`},
		{DLPProfile{Pointers: []string{"/a~2"}}, `pointer "/a~2": "~" must be followed by 0 or 1`},
		{DLPProfile{Pointers: []string{"/a~"}}, `pointer "/a~"`},
		{DLPProfile{Pointers: []string{""}}, `pointer "": the empty pointer would redact the whole value`},
		{DLPProfile{Pointers: []string{"/" + long}}, `more than 1024`},
	}
	for _, tt := range tests {
		_, err := CompileDLP("p", tt.p)
		if err == nil {
			t.Errorf("%+v: no error", tt.p)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `dlp profile "p": `) {
			t.Errorf("%+v: error %q, want it to name the profile and contain %q", tt.p, err, tt.want)
		}
	}
	if _, err := CompileDLP("empty", DLPProfile{}); err != nil {
		t.Errorf("empty profile: %v", err)
	}
}

// callToolResult is an MCP CallToolResult as a gateway decodes it.
func callToolResult() map[string]any {
	return map[string]any{
		"content": []any{
			map[string]any{"type": "text", "text": "token " + fakeJWT},
			map[string]any{"type": "text", "text": "mail jane@example.com about order 1234"},
			map[string]any{"type": "image", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "mimeType": "image/png"},
		},
		"structuredContent": map[string]any{
			"user": map[string]any{"email": "jane@example.com", "card": "4111 1111 1111 1111", "age": 41.0},
			"rows": []any{map[string]any{"key": fakeAWSKeyID, "ok": true, "none": nil}},
		},
		"isError": false,
	}
}

func TestRedactCallToolResult(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
	in := callToolResult()
	got, actions := r.Redact(in)
	want := callToolResult()
	want["content"].([]any)[0].(map[string]any)["text"] = "token [REDACTED:jwt]"
	want["content"].([]any)[1].(map[string]any)["text"] = "mail [REDACTED:email] about order 1234"
	sc := want["structuredContent"].(map[string]any)
	sc["user"].(map[string]any)["email"] = "[REDACTED:email]"
	sc["user"].(map[string]any)["card"] = "[REDACTED:card_number]"
	sc["rows"].([]any)[0].(map[string]any)["key"] = "[REDACTED:aws_access_key_id]"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redact\n got %v\nwant %v", got, want)
	}
	wantActions := []string{
		"jwt@/content/0/text",
		"email@/content/1/text",
		"aws_access_key_id@/structuredContent/rows/0/key",
		"card_number@/structuredContent/user/card",
		"email@/structuredContent/user/email",
	}
	if g := actionStrings(actions); !slices.Equal(g, wantActions) {
		t.Errorf("actions\n got %v\nwant %v", g, wantActions)
	}
	if !reflect.DeepEqual(in, callToolResult()) {
		t.Error("Redact modified its input")
	}
}

func TestRedactDoesNotMutate(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}, Pointers: []string{"/structuredContent/user"}})
	in := callToolResult()
	in["jane@example.com"] = []any{"x"} // a key that is redacted
	got, _ := r.Redact(in)
	want := callToolResult()
	want["jane@example.com"] = []any{"x"}
	if !reflect.DeepEqual(in, want) {
		t.Fatal("Redact modified its input")
	}
	// The result shares no map or slice with the input.
	g := got.(map[string]any)
	g["content"].([]any)[2].(map[string]any)["mimeType"] = "changed"
	g["structuredContent"].(map[string]any)["rows"].([]any)[0] = "changed"
	g["[REDACTED:email]"].([]any)[0] = "changed"
	if !reflect.DeepEqual(in, want) {
		t.Error("the result shares a map or slice with the input")
	}
}

func TestDLPActionsHoldNoSecret(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}, Patterns: []DLPPattern{{Name: "code", Regex: `CODE-\d{8}`}}})
	in := map[string]any{
		"jane@example.com":      map[string]any{"token": fakeJWT, fakeAWSKeyID: "x"},
		"a/" + fakeGitHub:       "CODE-12345678",
		"card 4111111111111111": []any{"postgres://u:hunter2hunter2@db/x"},
	}
	_, actions, secrets := r.redact(in)
	if len(actions) == 0 || len(secrets) == 0 {
		t.Fatalf("nothing redacted: %v", actions)
	}
	for _, a := range actions {
		for _, s := range append(secrets, dlpSecret{text: "jane@example.com"}, dlpSecret{text: "hunter2"}) {
			if strings.Contains(a.String(), s.text) {
				t.Errorf("action %q holds the secret %q", a, s.text)
			}
		}
	}
	want := []string{
		"email@/[REDACTED:email]",
		"aws_access_key_id@/[REDACTED:email]/[REDACTED:aws_access_key_id]",
		"jwt@/[REDACTED:email]/token",
		"github_token@/a~1[REDACTED:github_token]",
		"code@/a~1[REDACTED:github_token]",
		"card_number@/card [REDACTED:card_number]",
		"url_password@/card [REDACTED:card_number]/0",
	}
	if g := actionStrings(actions); !slices.Equal(g, want) {
		t.Errorf("actions\n got %v\nwant %v", g, want)
	}
}

func TestRedactKeys(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"emails"}})
	in := map[string]any{"b@example.com": 2.0, "a@example.com": 1.0, "[REDACTED:email] (3)": 3.0}
	for range 5 { // the same names every time, whatever the map order
		got, actions := r.Redact(in)
		want := map[string]any{"[REDACTED:email]": 1.0, "[REDACTED:email] (2)": 2.0, "[REDACTED:email] (3)": 3.0}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("keys: %v", got)
		}
		if a := actionStrings(actions); !slices.Equal(a, []string{"email@/[REDACTED:email]", "email@/[REDACTED:email] (2)"}) {
			t.Fatalf("actions %v", a)
		}
	}
}

func TestDLPEchoes(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
	// The same card inside a longer number, which alone is not a card.
	got, actions := r.RedactString("card 4111111111111111, ref 41111111111111110")
	if want := "card [REDACTED:card_number], ref [REDACTED:card_number]0"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(actions) != 2 {
		t.Errorf("actions %v", actions)
	}
	// A secret found in one member is redacted in the others.
	v, actions := r.Redact(map[string]any{
		"a": "Authorization: Bearer " + fakeBearer,
		"b": "echo " + fakeBearer,
	})
	if b := v.(map[string]any)["b"]; b != "echo [REDACTED:bearer_token]" {
		t.Errorf("b = %q", b)
	}
	if g := actionStrings(actions); !slices.Equal(g, []string{"bearer_token@/a", "bearer_token@/b"}) {
		t.Errorf("actions %v", g)
	}
	// Short values do not echo: a one-letter password stays elsewhere.
	got, _ = r.RedactString("redis://:x@cache:6379 x marks the spot")
	if want := "redis://:[REDACTED:url_password]@cache:6379 x marks the spot"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestDLPNumbersAndPairs(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
	got, actions := r.Redact(map[string]any{
		"pan":   4111111111111111.0,
		"num":   json.Number("5555555555554444"),
		"epoch": 1712345678901.0,
		"bad":   4111111111111112.0,
		"Credentials": map[string]any{
			"AccessKeyId":     fakeAWSKeyID,
			"SecretAccessKey": fakeAWSSecret,
			"SessionToken":    fakeAWSSession,
			"Expiration":      "2024-01-15T10:30:00Z",
		},
		"aws_secret_access_key": "not-a-key",
	})
	want := map[string]any{
		"pan":   "[REDACTED:card_number]",
		"num":   "[REDACTED:card_number]",
		"epoch": 1712345678901.0,
		"bad":   4111111111111112.0,
		"Credentials": map[string]any{
			"AccessKeyId":     "[REDACTED:aws_access_key_id]",
			"SecretAccessKey": "[REDACTED:aws_secret_access_key]",
			"SessionToken":    "[REDACTED:aws_session_token]",
			"Expiration":      "2024-01-15T10:30:00Z",
		},
		"aws_secret_access_key": "not-a-key",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redact\n got %v\nwant %v", got, want)
	}
	if len(actions) != 5 {
		t.Errorf("actions %v", actions)
	}
}

func TestRedactJSON(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}})
	raw := []byte(`{"n":4111111111111111,"big":12345678901234567890,"f":1.50,"t":"<b> a@example.com & more"}`)
	got, actions, err := r.RedactJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"big":12345678901234567890,"f":1.50,"n":"[REDACTED:card_number]","t":"<b> [REDACTED:email] & more"}`; string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if g := actionStrings(actions); !slices.Equal(g, []string{"card_number@/n", "email@/t"}) {
		t.Errorf("actions %v", g)
	}

	clean := []byte(`{"a": [1, 2.0, "x"]}`)
	got, actions, err = r.RedactJSON(clean)
	if err != nil || actions != nil || &got[0] != &clean[0] {
		t.Errorf("clean JSON: %s %v %v; want the input back", got, actions, err)
	}
	for _, bad := range []string{``, `{`, `{"a":}`, `{} {}`, `{}]`, `"a" x`} {
		if _, _, err := r.RedactJSON([]byte(bad)); err == nil || !strings.HasPrefix(err.Error(), "dlp: invalid JSON") {
			t.Errorf("RedactJSON(%q): error %v", bad, err)
		}
	}
	if _, _, err := r.RedactJSON([]byte(" {} \n")); err != nil {
		t.Errorf("whitespace around a value: %v", err)
	}
}

func TestRedactOtherValues(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"emails"}})
	type row struct {
		Mail string `json:"mail"`
	}
	got, actions := r.Redact(map[string]any{
		"list":   []string{"a@example.com"},
		"row":    row{"b@example.com"},
		"raw":    json.RawMessage(`{"c":"c@example.com"}`),
		"int":    7,
		"func":   func() {},
		"nilmap": map[string]any(nil),
		"nils":   []any(nil),
	})
	want := map[string]any{
		"list":   []any{"[REDACTED:email]"},
		"row":    map[string]any{"mail": "[REDACTED:email]"},
		"raw":    map[string]any{"c": "[REDACTED:email]"},
		"int":    json.Number("7"),
		"func":   "[REDACTED:unsupported]",
		"nilmap": map[string]any(nil),
		"nils":   []any(nil),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redact\n got %#v\nwant %#v", got, want)
	}
	if len(actions) != 4 {
		t.Errorf("actions %v", actions)
	}
}

func TestNilAndEmptyRedactor(t *testing.T) {
	var nilR *Redactor
	empty := mustDLP(t, DLPProfile{})
	for _, r := range []*Redactor{nilR, empty} {
		if s, a := r.RedactString("jane@example.com " + fakeJWT); s != "jane@example.com "+fakeJWT || a != nil {
			t.Errorf("%v: %q %v", r, s, a)
		}
		in := callToolResult()
		if got, a := r.Redact(in); !reflect.DeepEqual(got, in) || a != nil {
			t.Errorf("Redact: %v %v", got, a)
		}
	}
	if nilR.Name() != "" || empty.Name() != "test" {
		t.Error("Name")
	}
}

func TestRedactConcurrent(t *testing.T) {
	r := mustDLP(t, DLPProfile{Builtins: []string{"all"}, Pointers: []string{"/structuredContent/user/age"}})
	want, wantActions := r.Redact(callToolResult())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				got, actions := r.Redact(callToolResult())
				if !reflect.DeepEqual(got, want) || !slices.Equal(actions, wantActions) {
					t.Error("a concurrent Redact differs")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestDLPRuleNames(t *testing.T) {
	var rules []string
	for _, n := range DLPBuiltinNames() {
		for _, d := range builtinDetectors(n) {
			if !slices.Contains(rules, d.rule) {
				rules = append(rules, d.rule)
			}
			if d.token != "[REDACTED:"+d.rule+"]" {
				t.Errorf("%s: token %q", d.rule, d.token)
			}
		}
	}
	if !slices.Equal(rules, dlpRuleNamesAll) {
		t.Errorf("detector rules %v\n  reserved %v", rules, dlpRuleNamesAll)
	}
}

// TestDLPSchemaAgrees checks the policy schema lists the built-ins and
// limits that CompileDLP accepts.
func TestDLPSchemaAgrees(t *testing.T) {
	b := schemas.PolicySchema()
	var s struct {
		Defs map[string]struct {
			Properties struct {
				Builtins struct {
					Items struct {
						Enum []string `json:"enum"`
					} `json:"items"`
				} `json:"builtins"`
				Patterns struct {
					Items struct {
						Properties struct {
							Name  struct{ Pattern string } `json:"name"`
							Regex struct {
								MaxLength int `json:"maxLength"`
							} `json:"regex"`
						} `json:"properties"`
					} `json:"items"`
				} `json:"patterns"`
			} `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	dlp, ok := s.Defs["dlp"]
	if !ok {
		t.Fatal("no $defs.dlp in the policy schema")
	}
	enum := slices.Sorted(slices.Values(dlp.Properties.Builtins.Items.Enum))
	want := slices.Sorted(slices.Values(append(DLPBuiltinNames(), "all")))
	if !slices.Equal(enum, want) {
		t.Errorf("schema builtins %v, CompileDLP accepts %v", enum, want)
	}
	p := dlp.Properties.Patterns.Items.Properties
	if p.Name.Pattern != dlpPatternName.String() {
		t.Errorf("schema pattern name %q, CompileDLP %q", p.Name.Pattern, dlpPatternName)
	}
	if p.Regex.MaxLength != maxDLPPatternLen {
		t.Errorf("schema regex maxLength %d, CompileDLP %d", p.Regex.MaxLength, maxDLPPatternLen)
	}
}

// typicalToolResult is a 2 KB CallToolResult: log lines in a text block and
// the same rows as structuredContent. With secrets, three of them hold an
// email, a JWT and a card number.
func typicalToolResult(secrets bool) map[string]any {
	var text strings.Builder
	var rows []any
	for i := range 12 {
		line := "2024-01-15T10:30:0" + string(rune('0'+i%10)) + ".123Z INFO GET /api/v1/items/1234?page=2 status=200 " +
			"id=550e8400-e29b-41d4-a716-446655440000 took=12.5ms bytes=5120"
		if secrets && i%4 == 1 {
			line += [...]string{" by jane@example.com", " token " + fakeJWT, " card 4111 1111 1111 1111"}[i/4]
		}
		text.WriteString(line + "\n")
		rows = append(rows, map[string]any{"status": 200.0, "path": "/api/v1/items/1234", "took_ms": 12.5})
	}
	return map[string]any{
		"content":           []any{map[string]any{"type": "text", "text": text.String()}},
		"structuredContent": map[string]any{"requests": rows, "next": "https://api.example.com/v1/logs?cursor=abc"},
		"isError":           false,
	}
}

// BenchmarkRedact measures redaction of a typical 2 KB tool result with
// every built-in and one pattern (go test -bench Redact -benchmem ./policy/).
func BenchmarkRedact(b *testing.B) {
	r := mustDLP(b, DLPProfile{Builtins: []string{"all"}, Patterns: []DLPPattern{{Name: "employee_id", Regex: `\bEMP-\d{6}\b`}}})
	for _, tc := range []struct {
		name    string
		secrets bool
	}{{"clean", false}, {"secrets", true}} {
		v := typicalToolResult(tc.secrets)
		raw, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		_, actions := r.Redact(v)
		if tc.secrets != (len(actions) > 0) {
			b.Fatalf("%s: actions %v", tc.name, actions)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				r.Redact(v)
			}
		})
		b.Run(tc.name+"/json", func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := r.RedactJSON(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestRequiredLiteral(t *testing.T) {
	for expr, want := range map[string]string{
		`\bEMP-\d{6}\b`:                     "EMP-",
		`(?i)password=(?P<secret>\S+)`:      "",
		`pass(?i:word)=(\S+)`:               "pass",
		`(?:ab|cd)xyz`:                      "xyz",
		`a|b`:                               "",
		`x*ab`:                              "ab",
		`(foo){2}bar`:                       "foo",
		`(?:foo)?bar`:                       "bar",
		`[0-9]+`:                            "",
		`id:(?P<secret>[0-9]{4,})-\x{fffd}`: "id:",
	} {
		if got := requiredLiteral(expr); got != want {
			t.Errorf("requiredLiteral(%q) = %q, want %q", expr, got, want)
		}
	}
}

func TestRedactTooDeep(t *testing.T) {
	r := mustDLP(t, DLPProfile{})
	cyclic := map[string]any{}
	cyclic["self"] = cyclic // encoding/json never produces this; Redact must not loop
	deep := any("x")
	for range dlpMaxDepth + 5 {
		deep = []any{deep}
	}
	for _, v := range []any{cyclic, deep} {
		got, actions := r.Redact(v)
		if len(actions) != 1 || actions[0].Rule != "too_deep" || strings.Count(actions[0].Pointer, "/") != dlpMaxDepth+1 {
			t.Fatalf("actions %d, first %.40v", len(actions), actions)
		}
		for range dlpMaxDepth + 1 {
			switch x := got.(type) {
			case map[string]any:
				got = x["self"]
			case []any:
				got = x[0]
			}
		}
		if got != "[REDACTED:too_deep]" {
			t.Errorf("at the limit: %.40v", got)
		}
	}
}
