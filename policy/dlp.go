package policy

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DLPProfile is a named set of redaction rules (an allow-list document's
// dlp_profiles). The zero value redacts nothing.
type DLPProfile struct {
	// Builtins names built-in detectors to apply: "private_keys",
	// "cloud_keys", "jwt", "bearer_tokens", "url_passwords", "emails",
	// "card_numbers", or "all" for every one. DLPBuiltinNames lists them.
	Builtins []string `json:"builtins,omitempty" yaml:"builtins,omitempty"`
	// Pointers are JSON pointers (RFC 6901) whose values are replaced whole,
	// e.g. "/password", "/user/ssn". A segment "*" matches any one array
	// index or object key, e.g. "/items/*/secret" (and so also a key that is
	// literally "*"). The empty pointer, the whole document, is refused.
	Pointers []string `json:"pointers,omitempty" yaml:"pointers,omitempty"`
	// Patterns are extra regular expressions; each match in a string is
	// replaced.
	Patterns []DLPPattern `json:"patterns,omitempty" yaml:"patterns,omitempty"`
}

// DLPPattern is a profile's own redaction rule.
type DLPPattern struct {
	// Name identifies the rule in the replacement text and the audit
	// record: 1 to 64 of [A-Za-z0-9._-], starting with a letter or digit,
	// unique in its profile and distinct from the built-in rule names.
	Name string `json:"name" yaml:"name"`
	// Regex is an RE2 expression (package regexp) of at most 1024 bytes that
	// must not match the empty string. When it has a group named "secret",
	// as in `password=(?P<secret>\S+)`, only that group is replaced;
	// otherwise the whole match is.
	Regex string `json:"regex" yaml:"regex"`
}

// DLPAction is one redaction, for the audit record's dlp_actions. It holds
// the rule's name and the JSON pointer of the redacted value, never the
// value: a pointer through an object key that was itself redacted uses the
// redacted key.
type DLPAction struct {
	Rule    string `json:"rule"`
	Pointer string `json:"pointer"`
}

// String returns the action as the audit record stores it: rule@pointer,
// e.g. "jwt@/content/0/text". The pointer of RedactString's only value is
// the empty (root) pointer, as in "email@".
func (a DLPAction) String() string { return a.Rule + "@" + a.Pointer }

// Limits on a profile; the policy schema states the same ones.
const (
	maxDLPPatterns   = 128
	maxDLPPatternLen = 1024
	maxDLPPointers   = 256
	maxDLPPointerLen = 1024
	// dlpEchoMin is the shortest redacted value whose other occurrences in
	// the same document are redacted too (see Redactor.Redact).
	dlpEchoMin = 8
	// dlpMaxDepth matches encoding/json's nesting limit; deeper values
	// (which encoding/json never produces) are replaced whole.
	dlpMaxDepth = 10000
)

// Rule names of the redactions that are not a profile's pattern. A
// pattern may not take one of these names or a built-in detector's rule name.
const (
	dlpRulePointer     = "pointer"     // a value at one of the profile's pointers
	dlpRuleUnsupported = "unsupported" // a Go value that does not encode as JSON
	dlpRuleTooDeep     = "too_deep"    // a value nested deeper than dlpMaxDepth
)

const dlpRedactedPrefix = "[REDACTED:"

func dlpToken(rule string) string { return dlpRedactedPrefix + rule + "]" }

// DLPBuiltinNames returns the names DLPProfile.Builtins accepts besides
// "all", in the order their detectors run.
func DLPBuiltinNames() []string {
	return []string{"private_keys", "jwt", "cloud_keys", "bearer_tokens", "url_passwords", "emails", "card_numbers"}
}

// Redactor is a compiled DLPProfile. It is immutable and safe for
// concurrent use; a nil *Redactor redacts nothing.
type Redactor struct {
	name     string
	builtins []*dlpDetector // in DLPBuiltinNames order
	patterns []*dlpDetector // in profile order
	pointers [][]dlpPointerSeg
	root     []int // every pointer: those still matching at the root
	cards    bool  // numbers are checked as card numbers
	awsPairs bool  // object members labelled as AWS secrets are checked
}

// dlpPointerSeg is one unescaped segment of a profile pointer.
type dlpPointerSeg struct {
	key   string
	index int // key as an array index, or -1 when it is not one
	wild  bool
}

// Name returns the profile's name.
func (r *Redactor) Name() string {
	if r == nil {
		return ""
	}
	return r.name
}

var dlpPatternName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CompileDLP compiles a profile. Errors name the offending builtin, pattern
// or pointer. An empty profile is valid and redacts nothing.
func CompileDLP(name string, p DLPProfile) (*Redactor, error) {
	r := &Redactor{name: name}
	fail := func(format string, args ...any) (*Redactor, error) {
		return nil, fmt.Errorf("dlp profile %q: "+format, append([]any{name}, args...)...)
	}

	want := map[string]bool{}
	for _, b := range p.Builtins {
		switch {
		case b == "all":
			for _, n := range DLPBuiltinNames() {
				want[n] = true
			}
		case builtinDetectors(b) != nil:
			want[b] = true
		default:
			return fail("builtin %q is not one of all, %s", b, strings.Join(DLPBuiltinNames(), ", "))
		}
	}
	for _, n := range DLPBuiltinNames() {
		if want[n] {
			r.builtins = append(r.builtins, builtinDetectors(n)...)
		}
	}
	r.cards, r.awsPairs = want["card_numbers"], want["cloud_keys"]

	if len(p.Patterns) > maxDLPPatterns {
		return fail("%d patterns, more than %d", len(p.Patterns), maxDLPPatterns)
	}
	reserved := dlpReservedRules()
	seen := map[string]bool{}
	for i, pat := range p.Patterns {
		switch {
		case !dlpPatternName.MatchString(pat.Name):
			return fail("patterns[%d]: name %q must be 1 to 64 of [A-Za-z0-9._-], starting with a letter or digit", i, pat.Name)
		case reserved[pat.Name]:
			return fail("pattern %q: the name is a built-in rule's", pat.Name)
		case seen[pat.Name]:
			return fail("pattern %q: the name is used twice", pat.Name)
		case pat.Regex == "":
			return fail("pattern %q: regex is empty", pat.Name)
		case len(pat.Regex) > maxDLPPatternLen:
			return fail("pattern %q: regex is %d bytes, more than %d", pat.Name, len(pat.Regex), maxDLPPatternLen)
		}
		seen[pat.Name] = true
		re, err := regexp.Compile(pat.Regex)
		if err != nil {
			return fail("pattern %q: %v", pat.Name, err)
		}
		if re.MatchString("") {
			return fail("pattern %q: regex %q matches the empty string", pat.Name, pat.Regex)
		}
		d := &dlpDetector{rule: pat.Name, token: dlpToken(pat.Name), re: re}
		if lit := requiredLiteral(pat.Regex); lit != "" {
			d.pre = dlpContains(lit)
		}
		if g := re.SubexpIndex("secret"); g > 0 {
			d.group = g
		}
		r.patterns = append(r.patterns, d)
	}

	if len(p.Pointers) > maxDLPPointers {
		return fail("%d pointers, more than %d", len(p.Pointers), maxDLPPointers)
	}
	for _, ptr := range p.Pointers {
		segs, err := parseDLPPointer(ptr)
		if err != nil {
			return fail("pointer %q: %v", ptr, err)
		}
		r.root = append(r.root, len(r.pointers))
		r.pointers = append(r.pointers, segs)
	}
	return r, nil
}

// requiredLiteral returns a literal that every match of expr contains, or
// "": the longest case-sensitive literal among the parts of its top-level
// concatenation (through groups and repetitions of at least one). Checking
// for it first spares running the regexp over text that cannot match.
func requiredLiteral(expr string) string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return ""
	}
	var lit func(re *syntax.Regexp) string
	lit = func(re *syntax.Regexp) string {
		switch re.Op {
		case syntax.OpLiteral:
			// U+FFFD also matches invalid UTF-8, which Contains would miss.
			if re.Flags&syntax.FoldCase == 0 && !slices.Contains(re.Rune, utf8.RuneError) {
				return string(re.Rune)
			}
		case syntax.OpCapture, syntax.OpPlus:
			return lit(re.Sub[0])
		case syntax.OpRepeat:
			if re.Min >= 1 {
				return lit(re.Sub[0])
			}
		case syntax.OpConcat:
			best := ""
			for _, sub := range re.Sub {
				if l := lit(sub); len(l) > len(best) {
					best = l
				}
			}
			return best
		}
		return ""
	}
	return lit(re.Simplify())
}

// parseDLPPointer splits an RFC 6901 pointer into unescaped segments.
func parseDLPPointer(p string) ([]dlpPointerSeg, error) {
	switch {
	case p == "":
		return nil, errors.New("the empty pointer would redact the whole value; name its members instead")
	case len(p) > maxDLPPointerLen:
		return nil, fmt.Errorf("%d bytes, more than %d", len(p), maxDLPPointerLen)
	case p[0] != '/':
		return nil, errors.New(`a JSON pointer starts with "/"`)
	}
	var segs []dlpPointerSeg
	for _, raw := range strings.Split(p[1:], "/") {
		for i := 0; i < len(raw); i++ {
			if raw[i] == '~' && (i+1 == len(raw) || (raw[i+1] != '0' && raw[i+1] != '1')) {
				return nil, errors.New(`"~" must be followed by 0 or 1 ("~0" is "~", "~1" is "/")`)
			}
		}
		if raw == "*" {
			segs = append(segs, dlpPointerSeg{wild: true, index: -1})
			continue
		}
		key := strings.ReplaceAll(strings.ReplaceAll(raw, "~1", "/"), "~0", "~")
		segs = append(segs, dlpPointerSeg{key: key, index: dlpArrayIndex(key)})
	}
	return segs, nil
}

// dlpArrayIndex returns key as an RFC 6901 array index (decimal, no leading
// zeros), or -1.
func dlpArrayIndex(key string) int {
	if key == "" || (len(key) > 1 && key[0] == '0') || len(key) > 9 {
		return -1
	}
	n := 0
	for i := 0; i < len(key); i++ {
		if !dlpDigit(key[i]) {
			return -1
		}
		n = n*10 + int(key[i]-'0')
	}
	return n
}

// Redact returns a redacted copy of v, a decoded JSON value
// (map[string]any, []any, string, float64, json.Number, bool or nil), and
// the redactions made, ordered by pointer. v is not modified and shares no
// map or slice with the result. Other Go values are converted through
// encoding/json first; one that does not encode is replaced whole
// (rule "unsupported").
//
// A value at one of the profile's pointers is replaced whole by
// "[REDACTED:pointer]". Every other string, object keys included, is
// scanned by the built-ins and patterns, and each finding is replaced by
// "[REDACTED:<rule>]"; overlapping findings are merged into one replacement
// named after the one that starts first. With card_numbers, numbers that
// are card numbers are replaced by that string too; with cloud_keys, a
// string under a key such as "SecretAccessKey" or "aws_session_token" that
// has the shape of that secret is replaced whole.
//
// Once a value of at least 8 bytes has been redacted, its other occurrences
// anywhere in v are redacted too, under the same rule: a password at a
// pointer that a text echoes, or a card number inside a longer number.
// Values containing "[" or "]" are exempt, so that this never rewrites the
// replacement text itself.
func (r *Redactor) Redact(v any) (any, []DLPAction) {
	out, actions, _ := r.redact(v)
	return out, actions
}

// RedactString is Redact on one string, such as a prompt or a text content
// block. The actions' pointers are "".
func (r *Redactor) RedactString(s string) (string, []DLPAction) {
	out, actions, _ := r.redact(s)
	return out.(string), actions
}

// RedactJSON is Redact on raw JSON: one JSON value, which it returns
// re-encoded (without HTML escaping). When nothing is redacted it returns
// raw itself. Numbers keep their exact text. Invalid JSON is an error.
func (r *Redactor) RedactJSON(raw []byte) ([]byte, []DLPAction, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, nil, fmt.Errorf("dlp: invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("dlp: invalid JSON: data after the value")
	}
	out, actions := r.Redact(v)
	if len(actions) == 0 {
		return raw, nil, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return nil, nil, fmt.Errorf("dlp: encode: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), actions, nil
}

// dlpSecret is a redacted value, kept to redact its echoes.
type dlpSecret struct{ text, rule, token string }

// redact is Redact that also returns the values it redacted (for tests).
func (r *Redactor) redact(v any) (any, []DLPAction, []dlpSecret) {
	if r == nil {
		r = &Redactor{}
	}
	w := &dlpWalker{r: r}
	out := w.walk(v, r.root)
	if len(w.secrets) > 0 {
		echo := &dlpWalker{r: r, echo: w.secrets, actions: w.actions}
		out = echo.walk(out, nil)
		w.actions = echo.actions
	}
	slices.SortStableFunc(w.actions, func(a, b DLPAction) int { return strings.Compare(a.Pointer, b.Pointer) })
	return out, w.actions, w.secrets
}

// dlpWalker is the state of one Redact call: the first pass finds and
// replaces, the second (echo set) replaces the echoes of what the first found.
type dlpWalker struct {
	r       *Redactor
	echo    []dlpSecret // second pass: what to look for instead of the rules
	path    []dlpPathSeg
	actions []DLPAction
	secrets []dlpSecret
	seen    map[string]bool
	scratch []dlpSpan
}

type dlpPathSeg struct {
	key string
	idx int // array index, or -1 for an object member
}

func (w *dlpWalker) walk(v any, active []int) any {
	if len(w.path) > dlpMaxDepth {
		return w.replace(v, dlpRuleTooDeep)
	}
	switch x := v.(type) {
	case nil, bool:
		return x
	case string:
		out, rules := w.redactText(x)
		w.record(rules)
		return out
	case float64:
		if w.echo == nil && w.r.cards && x >= 1e12 && x < 1e19 && x == math.Trunc(x) {
			if s := strconv.FormatFloat(x, 'f', -1, 64); isCardNumber(s) {
				w.addSecret(s, "card_number", dlpCardToken)
				return w.replace(x, "card_number")
			}
		}
		return x
	case json.Number:
		if w.echo == nil && w.r.cards && isCardNumber(string(x)) {
			w.addSecret(string(x), "card_number", dlpCardToken)
			return w.replace(x, "card_number")
		}
		return x
	case map[string]any:
		return w.object(x, active)
	case []any:
		return w.array(x, active)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return w.replace(x, dlpRuleUnsupported)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var y any
		if err := dec.Decode(&y); err != nil {
			return w.replace(x, dlpRuleUnsupported)
		}
		return w.walk(y, active)
	}
}

func (w *dlpWalker) object(m map[string]any, active []int) any {
	if m == nil {
		return m
	}
	out := make(map[string]any, len(m))
	type renamed struct {
		orig, key string
		rules     []string
		val       any
	}
	var later []renamed
	for k, val := range m {
		nk, rules := w.redactText(k)
		if rules != nil {
			later = append(later, renamed{k, nk, rules, val})
			continue
		}
		w.path = append(w.path, dlpPathSeg{key: k, idx: -1})
		out[k] = w.member(k, -1, val, active)
		w.path = w.path[:len(w.path)-1]
	}
	// Keys with findings: in a fixed order, so that two that redact alike
	// get the same names on every run.
	slices.SortFunc(later, func(a, b renamed) int { return strings.Compare(a.orig, b.orig) })
	for _, l := range later {
		key := l.key
		for n := 2; ; n++ {
			if _, dup := out[key]; !dup {
				break
			}
			key = l.key + " (" + strconv.Itoa(n) + ")"
		}
		w.path = append(w.path, dlpPathSeg{key: key, idx: -1})
		w.record(l.rules)
		out[key] = w.member(l.orig, -1, l.val, active)
		w.path = w.path[:len(w.path)-1]
	}
	return out
}

func (w *dlpWalker) array(a []any, active []int) any {
	if a == nil {
		return a
	}
	out := make([]any, len(a))
	for i, val := range a {
		w.path = append(w.path, dlpPathSeg{idx: i})
		out[i] = w.member("", i, val, active)
		w.path = w.path[:len(w.path)-1]
	}
	return out
}

// member redacts the value of object key key (idx < 0) or array index idx,
// whose segment is already on w.path.
func (w *dlpWalker) member(key string, idx int, val any, active []int) any {
	var next []int
	if len(active) > 0 {
		var hit bool
		if next, hit = w.r.matchPointers(active, len(w.path)-1, key, idx); hit {
			return w.replace(val, dlpRulePointer)
		}
	}
	if idx < 0 && w.r.awsPairs && w.echo == nil {
		if s, ok := val.(string); ok {
			if rule := awsPair(key, s); rule != "" {
				return w.replace(val, rule)
			}
		}
	}
	return w.walk(val, next)
}

// matchPointers returns the pointers of active that continue below the
// member at depth, and whether one ends at it.
func (r *Redactor) matchPointers(active []int, depth int, key string, idx int) (next []int, hit bool) {
	for _, pi := range active {
		segs := r.pointers[pi]
		sg := segs[depth]
		switch {
		case sg.wild:
		case idx >= 0 && sg.index == idx:
		case idx < 0 && sg.key == key:
		default:
			continue
		}
		if len(segs) == depth+1 {
			return nil, true
		}
		next = append(next, pi)
	}
	return next, false
}

// replace replaces a whole value, remembering it when it is a string.
func (w *dlpWalker) replace(v any, rule string) any {
	tok := dlpToken(rule)
	if s, ok := v.(string); ok {
		w.addSecret(s, rule, tok)
	}
	w.record([]string{rule})
	return tok
}

func (w *dlpWalker) addSecret(text, rule, token string) {
	if len(text) < dlpEchoMin || strings.ContainsAny(text, "[]") || w.seen[text] {
		return
	}
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	w.seen[text] = true
	w.secrets = append(w.secrets, dlpSecret{text, rule, token})
}

func (w *dlpWalker) record(rules []string) {
	if len(rules) == 0 {
		return
	}
	p := w.pointer()
	for _, rule := range rules {
		w.actions = append(w.actions, DLPAction{Rule: rule, Pointer: p})
	}
}

// pointer returns the RFC 6901 pointer of the current value.
func (w *dlpWalker) pointer() string {
	var b strings.Builder
	for _, s := range w.path {
		b.WriteByte('/')
		if s.idx >= 0 {
			b.WriteString(strconv.Itoa(s.idx))
			continue
		}
		for i := 0; i < len(s.key); i++ {
			switch c := s.key[i]; c {
			case '~':
				b.WriteString("~0")
			case '/':
				b.WriteString("~1")
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

// dlpSpan is a finding: s[a:b] is to be replaced by token.
type dlpSpan struct {
	a, b        int
	rule, token string
}

// redactText returns s with its findings replaced, and the rule of each
// replacement (nil when there is none).
func (w *dlpWalker) redactText(s string) (string, []string) {
	var sp []dlpSpan
	if w.echo != nil {
		sp = echoSpans(s, w.echo, w.scratch[:0])
	} else {
		sp = w.r.scan(s, w.scratch[:0])
	}
	w.scratch = sp[:0]
	if len(sp) == 0 {
		return s, nil
	}
	if w.echo == nil {
		for _, x := range sp {
			w.addSecret(s[x.a:x.b], x.rule, x.token)
		}
	}
	sp = mergeSpans(sp)
	rules := make([]string, len(sp))
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for i, x := range sp {
		b.WriteString(s[last:x.a])
		b.WriteString(x.token)
		last = x.b
		rules[i] = x.rule
	}
	b.WriteString(s[last:])
	return b.String(), rules
}

// scan appends the findings of the profile's detectors in s to dst.
func (r *Redactor) scan(s string, dst []dlpSpan) []dlpSpan {
	for _, d := range r.builtins {
		dst = d.findAll(s, dst)
	}
	for _, d := range r.patterns {
		dst = d.findAll(s, dst)
	}
	return dst
}

func echoSpans(s string, secrets []dlpSecret, dst []dlpSpan) []dlpSpan {
	for _, x := range secrets {
		for off := 0; ; {
			i := strings.Index(s[off:], x.text)
			if i < 0 {
				break
			}
			dst = append(dst, dlpSpan{off + i, off + i + len(x.text), x.rule, x.token})
			off += i + len(x.text)
		}
	}
	return dst
}

// mergeSpans sorts spans by start and merges those that overlap; a merged
// span keeps the rule of the one that starts first (the longer, then the
// earlier detector, on a tie).
func mergeSpans(sp []dlpSpan) []dlpSpan {
	slices.SortStableFunc(sp, func(x, y dlpSpan) int {
		if c := cmp.Compare(x.a, y.a); c != 0 {
			return c
		}
		return cmp.Compare(y.b, x.b)
	})
	out := sp[:1]
	for _, x := range sp[1:] {
		last := &out[len(out)-1]
		if x.a < last.b {
			last.b = max(last.b, x.b)
			continue
		}
		out = append(out, x)
	}
	return out
}

// dlpDetector finds one kind of secret in text.
type dlpDetector struct {
	rule, token string
	// minLen is the length of the shortest text the detector can match in.
	minLen int
	// pre is a cheap test that s may hold a finding; nil means maybe.
	pre func(s string) bool
	re  *regexp.Regexp
	// group is the submatch to replace; 0 is the whole match.
	group int
	// anchor, when set, is where matches start (lower case, matched
	// ignoring ASCII case); re, anchored with ^, is tried at each one. It
	// spares scanning the whole text with a regexp that has no literal
	// prefix.
	anchor string
	// check accepts a candidate s[a:b] in its context, possibly narrowing it.
	check func(s string, a, b int) (int, int, bool)
	// find, when set, replaces re: it appends its findings to dst.
	find func(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan
}

func (d *dlpDetector) findAll(s string, dst []dlpSpan) []dlpSpan {
	if len(s) < d.minLen || (d.pre != nil && !d.pre(s)) {
		return dst
	}
	if d.find != nil {
		return d.find(s, d, dst)
	}
	if d.anchor != "" {
		for i := dlpIndexFold(s, d.anchor, 0); i >= 0; i = dlpIndexFold(s, d.anchor, i+1) {
			if m := d.re.FindStringSubmatchIndex(s[i:]); m != nil {
				dst = d.accept(s, i+m[2*d.group], i+m[2*d.group+1], m[2*d.group] >= 0, dst)
			}
		}
		return dst
	}
	for _, m := range d.re.FindAllStringSubmatchIndex(s, -1) {
		dst = d.accept(s, m[2*d.group], m[2*d.group+1], m[2*d.group] >= 0, dst)
	}
	return dst
}

// accept appends the candidate s[a:b] when it is not empty and passes the
// detector's check.
func (d *dlpDetector) accept(s string, a, b int, matched bool, dst []dlpSpan) []dlpSpan {
	if !matched || a == b {
		return dst
	}
	if d.check != nil {
		var ok bool
		if a, b, ok = d.check(s, a, b); !ok {
			return dst
		}
	}
	return append(dst, dlpSpan{a, b, d.rule, d.token})
}

// The built-in detectors. Each regexp finds candidates; its check applies
// the context and content rules that keep false positives down.
var (
	// A PEM private key block, BEGIN to END; a block cut short (no END) is
	// redacted to the end of its base64 body.
	rePrivateKey = regexp.MustCompile(`-----BEGIN (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----` +
		`(?:(?s:.*?)-----END (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,.\-]*)`)
	// A JWE (five segments) or a JWS (three, the payload a JSON object; the
	// signature may be empty). The check decodes the header.
	reJWT = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.(?:[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)`)

	reAWSKeyID = regexp.MustCompile(`(?:AKIA|ASIA)[A-Z0-9]{16}`)
	// A label, then the value (tried at each "secret" and "session").
	reAWSSecret    = regexp.MustCompile(`^(?i)secret[_\-. ]?access[_\-. ]?key["']?\s*(?::|=>?)\s*["']?([A-Za-z0-9/+=]{40,})`)
	reAWSSession   = regexp.MustCompile(`^(?i)session[_\-. ]?token["']?\s*(?::|=>?)\s*["']?([A-Za-z0-9/+=]{100,})`)
	reGCPKey       = regexp.MustCompile(`AIza[0-9A-Za-z_\-]{35}`)
	reGitHubToken  = regexp.MustCompile(`gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{60,251}`)
	reSlackToken   = regexp.MustCompile(`xox[baprs]-[A-Za-z0-9-]{10,250}`)
	reSlackWebhook = regexp.MustCompile(`https://hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9_/\-]+)`)
	reStripeKey    = regexp.MustCompile(`(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}`)
	reSKKey        = regexp.MustCompile(`sk-[A-Za-z0-9_\-]{32,}`)
	// The domain of an email, tried after each "@" (findEmails).
	reEmailDomain   = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}`)
	dlpCardToken    = dlpToken("card_number")
	dlpRuleNamesAll = []string{
		"private_key", "jwt", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
		"gcp_api_key", "github_token", "slack_token", "slack_webhook", "stripe_key", "api_key",
		"bearer_token", "basic_auth", "url_password", "email", "card_number",
	}
)

func dlpReservedRules() map[string]bool {
	m := map[string]bool{dlpRulePointer: true, dlpRuleUnsupported: true, dlpRuleTooDeep: true}
	for _, n := range dlpRuleNamesAll {
		m[n] = true
	}
	return m
}

// builtinDetectors returns the detectors of one built-in, nil for an
// unknown name. minLen is the length of the shortest text a detector can
// match in.
func builtinDetectors(name string) []*dlpDetector {
	tok := dlpToken
	switch name {
	case "private_keys":
		return []*dlpDetector{{rule: "private_key", token: tok("private_key"), minLen: 27, pre: dlpContains("PRIVATE KEY"), re: rePrivateKey}}
	case "jwt":
		return []*dlpDetector{{rule: "jwt", token: tok("jwt"), minLen: 9, pre: dlpContains("eyJ"), re: reJWT, check: checkJWT}}
	case "cloud_keys":
		return []*dlpDetector{
			{rule: "aws_access_key_id", token: tok("aws_access_key_id"), minLen: 20, pre: dlpContains("AKIA", "ASIA"), re: reAWSKeyID, check: wordBounded},
			{rule: "aws_secret_access_key", token: tok("aws_secret_access_key"), minLen: 56, anchor: "secret", re: reAWSSecret, group: 1, check: checkAWSSecret},
			{rule: "aws_session_token", token: tok("aws_session_token"), minLen: 113, anchor: "session", re: reAWSSession, group: 1},
			{rule: "gcp_api_key", token: tok("gcp_api_key"), minLen: 39, pre: dlpContains("AIza"), re: reGCPKey, check: keyBounded},
			{rule: "github_token", token: tok("github_token"), minLen: 40, pre: dlpContains("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), re: reGitHubToken, check: wordBounded},
			{rule: "slack_token", token: tok("slack_token"), minLen: 15, pre: dlpContains("xox"), re: reSlackToken, check: checkSlack},
			{rule: "slack_webhook", token: tok("slack_webhook"), minLen: 34, pre: dlpContains("hooks.slack.com"), re: reSlackWebhook, group: 1},
			{rule: "stripe_key", token: tok("stripe_key"), minLen: 24, pre: dlpContains("_live_", "_test_"), re: reStripeKey, check: wordBounded},
			{rule: "api_key", token: tok("api_key"), minLen: 35, pre: dlpContains("sk-"), re: reSKKey, check: checkSKKey},
		}
	case "bearer_tokens":
		return []*dlpDetector{
			{rule: "bearer_token", token: tok("bearer_token"), minLen: 21, find: findBearer},
			{rule: "basic_auth", token: tok("basic_auth"), minLen: 14, find: findBasic},
		}
	case "url_passwords":
		return []*dlpDetector{{rule: "url_password", token: tok("url_password"), minLen: 8, find: findURLPasswords}}
	case "emails":
		return []*dlpDetector{{rule: "email", token: tok("email"), minLen: 6, find: findEmails}}
	case "card_numbers":
		return []*dlpDetector{{rule: "card_number", token: dlpCardToken, minLen: 13, find: findCards}}
	}
	return nil
}

func dlpContains(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if strings.Contains(s, sub) {
				return true
			}
		}
		return false
	}
}

// dlpIndexFold returns the index of the first needle (lower case ASCII) in
// s at or after from, ignoring ASCII case, or -1.
func dlpIndexFold(s, needle string, from int) int {
	lo, up := needle[0], needle[0]
	if dlpLowerCase(lo) {
		up = lo - 'a' + 'A'
	}
	nl, nu := dlpIndexByteFrom(s, lo, from), dlpIndexByteFrom(s, up, from)
	for nl >= 0 || nu >= 0 {
		i := nl
		if nl < 0 || (nu >= 0 && nu < nl) {
			i = nu
		}
		if i+len(needle) > len(s) {
			return -1
		}
		if dlpEqualFold(s[i:i+len(needle)], needle) {
			return i
		}
		if i == nl {
			nl = dlpIndexByteFrom(s, lo, i+1)
		}
		if i == nu {
			nu = dlpIndexByteFrom(s, up, i+1)
		}
	}
	return -1
}

func dlpIndexByteFrom(s string, c byte, from int) int {
	if from >= len(s) {
		return -1
	}
	if i := strings.IndexByte(s[from:], c); i >= 0 {
		return from + i
	}
	return -1
}

func dlpEqualFold(s, lowerSub string) bool {
	for i := 0; i < len(s); i++ {
		if dlpFold(s[i]) != lowerSub[i] {
			return false
		}
	}
	return true
}

func dlpFold(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func dlpDigit(c byte) bool     { return '0' <= c && c <= '9' }
func dlpUpper(c byte) bool     { return 'A' <= c && c <= 'Z' }
func dlpLowerCase(c byte) bool { return 'a' <= c && c <= 'z' }
func dlpAlnum(c byte) bool     { return dlpDigit(c) || dlpUpper(c) || dlpLowerCase(c) }
func dlpWord(c byte) bool      { return dlpAlnum(c) || c == '_' }

// wordBounded accepts a candidate with no word character (\w) on either side.
func wordBounded(s string, a, b int) (int, int, bool) {
	return a, b, (a == 0 || !dlpWord(s[a-1])) && (b == len(s) || !dlpWord(s[b]))
}

// keyBounded is wordBounded that also counts "-" as part of a word.
func keyBounded(s string, a, b int) (int, int, bool) {
	ok := (a == 0 || !(dlpWord(s[a-1]) || s[a-1] == '-')) && (b == len(s) || !(dlpWord(s[b]) || s[b] == '-'))
	return a, b, ok
}

// checkJWT accepts a token whose header decodes to a JSON object with an
// "alg" (and, for five segments, an "enc"), and that does not continue a
// longer base64url word.
func checkJWT(s string, a, b int) (int, int, bool) {
	if a > 0 && (dlpWord(s[a-1]) || s[a-1] == '-') {
		return 0, 0, false
	}
	tok := s[a:b]
	d1 := strings.IndexByte(tok, '.')
	raw, err := base64.RawURLEncoding.DecodeString(tok[:d1])
	if err != nil {
		return 0, 0, false
	}
	var hdr struct {
		Alg string `json:"alg"`
		Enc string `json:"enc"`
	}
	if json.Unmarshal(raw, &hdr) != nil || hdr.Alg == "" {
		return 0, 0, false
	}
	if strings.Count(tok, ".") == 2 || hdr.Enc != "" {
		return a, b, true
	}
	// Five segments without "enc": a JWS followed by more dotted text.
	rest := tok[d1+1:]
	if !strings.HasPrefix(rest, "eyJ") {
		return 0, 0, false
	}
	d2 := strings.IndexByte(rest, '.')
	d3 := strings.IndexByte(rest[d2+1:], '.')
	return a, a + d1 + 1 + d2 + 1 + d3, true
}

// checkAWSSecret accepts exactly 40 characters of base64 (no padding).
func checkAWSSecret(s string, a, b int) (int, int, bool) {
	return a, b, b-a == 40 && !strings.Contains(s[a:b], "=")
}

func checkSlack(s string, a, b int) (int, int, bool) {
	if _, _, ok := keyBounded(s, a, b); !ok {
		return 0, 0, false
	}
	return a, b, strings.ContainsAny(s[a+5:b], "0123456789")
}

// checkSKKey accepts an sk- key that starts a word and whose body mixes
// digits, upper and lower case, as random keys do (kebab-case names do not).
func checkSKKey(s string, a, b int) (int, int, bool) {
	if a > 0 && (dlpWord(s[a-1]) || s[a-1] == '-') {
		return 0, 0, false
	}
	var digit, up, low bool
	for i := a + 3; i < b; i++ {
		c := s[i]
		digit, up, low = digit || dlpDigit(c), up || dlpUpper(c), low || dlpLowerCase(c)
	}
	return a, b, digit && up && low
}

// checkBearer accepts a token with a digit, or with both upper case (after
// its first letter) and lower case: prose after "bearer" has neither.
func checkBearer(s string, a, b int) (int, int, bool) {
	var digit, up, low bool
	for i := a; i < b; i++ {
		c := s[i]
		digit, low = digit || dlpDigit(c), low || dlpLowerCase(c)
		up = up || (i > a && dlpUpper(c))
	}
	return a, b, digit || (up && low)
}

// checkBasic accepts credentials that decode to printable "user:password".
func checkBasic(s string, a, b int) (int, int, bool) {
	raw, err := base64.StdEncoding.DecodeString(s[a:b])
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(s[a:b]); err != nil {
			return 0, 0, false
		}
	}
	i := bytes.IndexByte(raw, ':')
	if i < 0 || i == len(raw)-1 || !utf8.Valid(raw) {
		return 0, 0, false
	}
	for _, c := range raw {
		if c < 0x20 || c == 0x7f {
			return 0, 0, false
		}
	}
	return a, b, true
}

// findBearer finds the credentials of the Bearer and DPoP schemes: a
// token68 of at least 16 characters (before any "=" padding) after the
// scheme name (a word of its own, any case) and spaces or tabs.
func findBearer(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	for _, scheme := range []string{"bearer", "dpop"} {
		dst = findAuthScheme(s, scheme, d, dst, func(c byte) bool {
			return dlpAlnum(c) || strings.IndexByte("-._~+/", c) >= 0
		}, 16, -1, checkBearer)
	}
	return dst
}

// findBasic finds the credentials of the Basic scheme: base64 of at least
// 8 characters (and up to two "=") that decodes to "user:password".
func findBasic(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	return findAuthScheme(s, "basic", d, dst, func(c byte) bool {
		return dlpAlnum(c) || c == '+' || c == '/'
	}, 8, 2, checkBasic)
}

// findAuthScheme finds "<scheme> <credentials>": the scheme name (lower
// case, matched ignoring case) not preceded by a word character, spaces or
// tabs, then at least minLen characters of class and at most pad "=" (-1:
// any number).
func findAuthScheme(s, scheme string, d *dlpDetector, dst []dlpSpan, class func(byte) bool, minLen, pad int, check func(string, int, int) (int, int, bool)) []dlpSpan {
	for i := dlpIndexFold(s, scheme, 0); i >= 0; i = dlpIndexFold(s, scheme, i+1) {
		if i > 0 && dlpWord(s[i-1]) {
			continue
		}
		a := i + len(scheme)
		for a < len(s) && (s[a] == ' ' || s[a] == '\t') {
			a++
		}
		if a == i+len(scheme) {
			continue
		}
		b := a
		for b < len(s) && class(s[b]) {
			b++
		}
		if b-a < minLen {
			continue
		}
		for n := 0; b < len(s) && s[b] == '=' && (pad < 0 || n < pad); n++ {
			b++
		}
		if a, b, ok := check(s, a, b); ok {
			dst = append(dst, dlpSpan{a, b, d.rule, d.token})
		}
	}
	return dst
}

// findURLPasswords finds the password in "scheme://user:password@host"
// and in Go MySQL DSNs "user:password@tcp(host)" (also udp, unix). The
// authority runs from "://" to the first whitespace, "/", "?", "#", quote or
// angle bracket; its userinfo ends at its last "@" followed by a host (so a
// password may hold "@"), and the password starts after the userinfo's
// first ":". A masked password ("****") is left alone.
func findURLPasswords(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	for off := 0; ; {
		i := strings.Index(s[off:], "://")
		if i < 0 {
			break
		}
		i += off
		off = i + 3
		j := i // the scheme: a letter, then letters, digits, "+", "." or "-"
		for j > 0 && (dlpAlnum(s[j-1]) || s[j-1] == '+' || s[j-1] == '.' || s[j-1] == '-') {
			j--
		}
		for j < i && !(dlpUpper(s[j]) || dlpLowerCase(s[j])) {
			j++
		}
		if j == i {
			continue
		}
		k := off
		for k < len(s) && !dlpSpace(s[k]) && strings.IndexByte("/?#\"'<>`", s[k]) < 0 {
			k++
		}
		auth := s[off:k]
		at := strings.LastIndexByte(auth, '@') // the last "@" that a host follows
		for at >= 0 && (at+1 == len(auth) || !(dlpAlnum(auth[at+1]) || strings.IndexByte("[%_-", auth[at+1]) >= 0)) {
			at = strings.LastIndexByte(auth[:at], '@')
		}
		if at < 0 {
			continue
		}
		c := strings.IndexByte(auth[:at], ':')
		if c < 0 || strings.ContainsAny(auth[:at], "[]") {
			continue
		}
		dst = urlPassword(s, off+c+1, off+at, d, dst)
	}
	if !strings.Contains(s, "@tcp(") && !strings.Contains(s, "@udp(") && !strings.Contains(s, "@unix(") {
		return dst
	}
	for off := 0; ; {
		i := strings.IndexByte(s[off:], '@')
		if i < 0 {
			break
		}
		at := off + i
		off = at + 1
		if rest := s[at+1:]; !strings.HasPrefix(rest, "tcp(") && !strings.HasPrefix(rest, "udp(") && !strings.HasPrefix(rest, "unix(") {
			continue
		}
		p := at // the password: back to a ":" over anything but whitespace, ":", "@" and "/"
		for p > 0 && !dlpSpace(s[p-1]) && strings.IndexByte(":@/", s[p-1]) < 0 {
			p--
		}
		if p == at || p == 0 || s[p-1] != ':' {
			continue
		}
		if u := p - 1; u == 0 || !(dlpWord(s[u-1]) || s[u-1] == '.' || s[u-1] == '-') {
			continue // no user
		}
		dst = urlPassword(s, p, at, d, dst)
	}
	return dst
}

func urlPassword(s string, a, b int, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	if a == b || strings.Trim(s[a:b], "*") == "" {
		return dst
	}
	return append(dst, dlpSpan{a, b, d.rule, d.token})
}

func dlpSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' }

// findEmails finds addresses: a local part of [A-Za-z0-9._%+-], "@", and
// a domain of dot-separated labels ending in a top-level domain of 2 to 63
// letters. So "user@localhost", "a@b" and "pkg@1.2.3" are not addresses.
func findEmails(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	last := 0
	for off := 0; ; {
		i := strings.IndexByte(s[off:], '@')
		if i < 0 {
			return dst
		}
		at := off + i
		off = at + 1
		a := at
		for a > last && (dlpAlnum(s[a-1]) || strings.IndexByte("._%+-", s[a-1]) >= 0) {
			a--
		}
		if a == at {
			continue
		}
		m := reEmailDomain.FindStringIndex(s[at+1:])
		if m == nil {
			continue
		}
		b := at + 1 + m[1]
		if _, _, ok := checkEmail(s, a, b); !ok {
			continue
		}
		dst = append(dst, dlpSpan{a, b, d.rule, d.token})
		last, off = b, b
	}
}

// checkEmail rejects a domain that goes on past the match, "git@host"
// (the SSH remote convention, not a mailbox), retina asset names
// ("icon@2x.png") and the "user:password@host" of a URL, which
// url_passwords handles.
func checkEmail(s string, a, b int) (int, int, bool) {
	if b < len(s) {
		if n := s[b]; dlpWord(n) || n == '-' || n == '@' || (n == '.' && b+1 < len(s) && dlpAlnum(s[b+1])) {
			return 0, 0, false
		}
	}
	at := a + strings.IndexByte(s[a:b], '@')
	if strings.EqualFold(s[a:at], "git") {
		return 0, 0, false
	}
	label := s[at+1:]
	label = label[:strings.IndexByte(label, '.')]
	if len(label) >= 2 && label[len(label)-1] == 'x' && strings.Trim(label[:len(label)-1], "0123456789") == "" {
		return 0, 0, false
	}
	if a > 0 && s[a-1] == ':' {
		start := strings.LastIndexAny(s[:a], " \t\r\n\"'<>") + 1
		if strings.Contains(s[start:a], "://") {
			return 0, 0, false
		}
	}
	return a, b, true
}

// awsPair returns the rule for an object member that holds an AWS secret
// under its usual key (the shape of `aws sts` output and credential files),
// or "".
func awsPair(key, val string) string {
	if len(key) < 12 || len(key) > 32 {
		return ""
	}
	var buf [32]byte
	n := 0
	for i := 0; i < len(key); i++ {
		switch c := key[i]; c {
		case '_', '-', '.', ' ':
		default:
			buf[n] = dlpFold(c)
			n++
		}
	}
	switch string(buf[:n]) {
	case "awssecretaccesskey", "secretaccesskey":
		if len(val) == 40 && dlpBase64(val, false) {
			return "aws_secret_access_key"
		}
	case "awssessiontoken", "sessiontoken":
		if len(val) >= 100 && dlpBase64(val, true) {
			return "aws_session_token"
		}
	}
	return ""
}

func dlpBase64(s string, padding bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(dlpAlnum(c) || c == '+' || c == '/' || (padding && c == '=')) {
			return false
		}
	}
	return true
}

// findCards finds card numbers: 13 to 19 digits, either unbroken or in
// groups separated by one space or one dash (the same throughout) shaped
// 4-4-4-4 (the last group 1 to 4 digits, up to five groups) or 4-6-5/4-6-4
// (American Express, Diners). The digits must pass the Luhn check and
// start with an issuer prefix whose card lengths include theirs. The number
// must not continue a word or a decimal ("v4111…", "0.4111…", "+4411…").
func findCards(s string, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	digits := 0
	for i := 0; i < len(s) && digits < 13; i++ {
		if dlpDigit(s[i]) {
			digits++
		}
	}
	if digits < 13 {
		return dst
	}
	var buf [8]dlpCardGroup
	groups := buf[:0]
	for i := 0; i < len(s); {
		if !dlpDigit(s[i]) {
			i++
			continue
		}
		groups = groups[:0]
		var sep byte
		j := i
		for {
			k := j
			for k < len(s) && dlpDigit(s[k]) {
				k++
			}
			groups = append(groups, dlpCardGroup{j, k})
			if k+1 < len(s) && (s[k] == ' ' || s[k] == '-') && (sep == 0 || sep == s[k]) && dlpDigit(s[k+1]) {
				sep, j = s[k], k+1
				continue
			}
			j = k
			break
		}
		dst = cardWindows(s, groups, d, dst)
		i = j
	}
	return dst
}

type dlpCardGroup struct{ a, b int }

// cardWindows finds the cards in one run of digit groups, taking at each
// group the longest card that starts there.
func cardWindows(s string, gs []dlpCardGroup, d *dlpDetector, dst []dlpSpan) []dlpSpan {
	leftOK, rightOK := cardLeftOK(s, gs[0].a), cardRightOK(s, gs[len(gs)-1].b)
	for g := 0; g < len(gs); {
		end := -1
		for e := min(len(gs), g+5) - 1; e >= g && (g > 0 || leftOK); e-- {
			if (e < len(gs)-1 || rightOK) && cardShape(gs[g:e+1]) && cardDigits(s, gs[g:e+1]) {
				end = e
				break
			}
		}
		if end < 0 {
			g++
			continue
		}
		dst = append(dst, dlpSpan{gs[g].a, gs[end].b, d.rule, d.token})
		g = end + 1
	}
	return dst
}

func cardLeftOK(s string, i int) bool {
	if i == 0 {
		return true
	}
	p := s[i-1]
	if dlpWord(p) || p == '+' {
		return false
	}
	return !((p == '.' || p == '-') && i >= 2 && dlpDigit(s[i-2]))
}

func cardRightOK(s string, j int) bool {
	if j == len(s) {
		return true
	}
	n := s[j]
	if dlpWord(n) {
		return false
	}
	return !((n == '.' || n == '-') && j+1 < len(s) && dlpDigit(s[j+1]))
}

func cardShape(gs []dlpCardGroup) bool {
	n := len(gs)
	l := func(i int) int { return gs[i].b - gs[i].a }
	if n == 1 {
		return l(0) >= 13 && l(0) <= 19
	}
	if l(0) != 4 {
		return false
	}
	if n == 3 {
		return l(1) == 6 && (l(2) == 5 || l(2) == 4)
	}
	if n < 4 || n > 5 {
		return false
	}
	for i := 1; i < n-1; i++ {
		if l(i) != 4 {
			return false
		}
	}
	last := l(n - 1)
	return last >= 1 && last <= 4 && 4*(n-1)+last <= 19
}

// cardDigits checks the digits of groups (13 to 19 of them, by their shape).
func cardDigits(s string, gs []dlpCardGroup) bool {
	var buf [19]byte
	n := 0
	for _, g := range gs {
		n += copy(buf[n:], s[g.a:g.b])
	}
	return cardIIN(buf[:n]) && luhn(buf[:n])
}

// isCardNumber reports whether s, all digits, is a card number.
func isCardNumber(s string) bool {
	if len(s) < 13 || len(s) > 19 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !dlpDigit(s[i]) {
			return false
		}
	}
	return cardIIN([]byte(s)) && luhn([]byte(s))
}

// cardIIN reports whether d (13 to 19 digits) starts with an issuer prefix
// whose cards have its length.
func cardIIN(d []byte) bool {
	n := len(d)
	p2 := int(d[0]-'0')*10 + int(d[1]-'0')
	p4 := p2*100 + int(d[2]-'0')*10 + int(d[3]-'0')
	switch {
	case d[0] == '4': // Visa
		return n == 13 || n == 16 || n == 19
	case p2 == 34 || p2 == 37: // American Express
		return n == 15
	case p2 >= 51 && p2 <= 55, p4 >= 2221 && p4 <= 2720: // Mastercard
		return n == 16
	case p2 == 30 || p2 == 36 || p2 == 38 || p2 == 39: // Diners Club
		return n >= 14
	case p2 == 35: // JCB
		return n >= 16
	case d[0] == '6': // Discover, UnionPay, Maestro, RuPay
		return n >= 16
	case p2 == 50 || (p2 >= 56 && p2 <= 58): // Maestro
		return true
	}
	return false
}

func luhn(d []byte) bool {
	sum := 0
	for i := len(d) - 1; i >= 0; i -= 2 {
		sum += int(d[i] - '0')
	}
	for i := len(d) - 2; i >= 0; i -= 2 {
		x := 2 * int(d[i]-'0')
		if x > 9 {
			x -= 9
		}
		sum += x
	}
	return sum%10 == 0
}
