package policy

import (
	"errors"
	"regexp"
	"strings"
)

// uriPattern matches resource URIs against a rule's entry: an exact URI, a
// glob (* any run of characters, / included; ? one character) or an RFC 6570
// URI template, whose {expressions} match one path segment ({+var} and
// {#var}: any run). A template entry also matches the template itself, so
// that resources/templates/list shows the templates a rule names.
type uriPattern struct {
	src   string
	exact bool
	re    *regexp.Regexp
}

func compileURIPattern(src string) (*uriPattern, error) {
	if !strings.ContainsAny(src, "*?{}") {
		return &uriPattern{src: src, exact: true}, nil
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(src); i++ {
		switch c := src[i]; c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '{':
			end := strings.IndexByte(src[i:], '}')
			if end < 2 {
				return nil, errors.New("an unclosed or empty {expression}")
			}
			expr := src[i+1 : i+end]
			if strings.ContainsAny(expr, "{*?") {
				return nil, errors.New("a {expression} holds a glob or another {")
			}
			if expr[0] == '+' || expr[0] == '#' {
				b.WriteString(`(?:.+|` + regexp.QuoteMeta(src[i:i+end+1]) + `)`)
			} else {
				b.WriteString(`(?:[^/?#]+|` + regexp.QuoteMeta(src[i:i+end+1]) + `)`)
			}
			i += end
		case '}':
			return nil, errors.New("a } without its {")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, err
	}
	return &uriPattern{src: src, re: re}, nil
}

func (p *uriPattern) match(uri string) bool {
	if p.exact {
		return uri == p.src
	}
	return p.re.MatchString(uri)
}
