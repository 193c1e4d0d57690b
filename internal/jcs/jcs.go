// Package jcs writes JSON in the canonical form of RFC 8785 (JSON
// Canonicalization Scheme): what a detached signature over a JSON document
// covers, such as an A2A agent card's. It owns no I/O.
package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Transform returns the canonical form of the JSON document b.
func Transform(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("jcs: %w", err)
	}
	if dec.More() {
		return nil, errors.New("jcs: more than one JSON value")
	}
	var out bytes.Buffer
	if err := write(&out, v); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Value returns the canonical form of v, a value as encoding/json decodes
// JSON into any (with or without UseNumber).
func Value(v any) ([]byte, error) {
	var out bytes.Buffer
	if err := write(&out, v); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func write(out *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		out.WriteString("null")
	case bool:
		out.WriteString(strconv.FormatBool(v))
	case string:
		return writeString(out, v)
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return fmt.Errorf("jcs: number %s: %w", v, err)
		}
		return writeNumber(out, f)
	case float64:
		return writeNumber(out, v)
	case []any:
		out.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				out.WriteByte(',')
			}
			if err := write(out, e); err != nil {
				return err
			}
		}
		out.WriteByte(']')
	case map[string]any:
		// §3.2.3: members sorted by their names as UTF-16 code units.
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b))) })
		out.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				out.WriteByte(',')
			}
			if err := writeString(out, k); err != nil {
				return err
			}
			out.WriteByte(':')
			if err := write(out, v[k]); err != nil {
				return err
			}
		}
		out.WriteByte('}')
	default:
		return fmt.Errorf("jcs: %T is not a JSON value", v)
	}
	return nil
}

// writeString writes s as §3.2.2.2 says (ECMAScript's JSON.stringify):
// the two-character escapes, \u00XX for other control characters,
// everything else as it is.
func writeString(out *bytes.Buffer, s string) error {
	if !utf8.ValidString(s) {
		return errors.New("jcs: a string is not valid UTF-8")
	}
	out.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			out.WriteString(`\"`)
		case '\\':
			out.WriteString(`\\`)
		case '\b':
			out.WriteString(`\b`)
		case '\f':
			out.WriteString(`\f`)
		case '\n':
			out.WriteString(`\n`)
		case '\r':
			out.WriteString(`\r`)
		case '\t':
			out.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(out, `\u%04x`, r)
			} else {
				out.WriteRune(r)
			}
		}
	}
	out.WriteByte('"')
	return nil
}

// writeNumber writes f as §3.2.2.3 says (ECMAScript's Number.toString):
// the shortest digits that read back as f, plain between 1e-6 and 1e21,
// in exponent form outside.
func writeNumber(out *bytes.Buffer, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return errors.New("jcs: NaN and Infinity are not JSON numbers")
	}
	if f == 0 {
		out.WriteByte('0') // -0 too
		return nil
	}
	if abs := math.Abs(f); abs >= 1e-6 && abs < 1e21 {
		out.WriteString(strconv.FormatFloat(f, 'f', -1, 64))
		return nil
	}
	// Exponent form: d[.ddd]e±n, no leading zeros in the exponent.
	s := strconv.FormatFloat(f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(s, "e")
	sign := exp[0]
	exp = strings.TrimLeft(exp[1:], "0")
	out.WriteString(mant + "e" + string(sign) + exp)
	return nil
}
