package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// KeepKeys is how many signing keys stay published: the active one and the
// ones it replaced, so that tokens signed before a rotation still verify
// until they expire.
const KeepKeys = 3

// Keys are the gateway's ES256 signing keys, kept as private JWK files in a
// directory (mode 0600). The newest file is the active key; older ones stay
// published in the JWKS until KeepKeys newer ones exist. The key id is the
// key's RFC 7638 thumbprint. Keys is safe for concurrent use.
type Keys struct {
	dir string

	mu     sync.RWMutex
	active jwk.Key // private
	kid    string
	public jwk.Set // every kept key, public parts only
}

// LoadKeys reads the signing keys in dir, creating dir and a first key when
// there is none.
func LoadKeys(dir string) (*Keys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: keys: %w", err)
	}
	k := &Keys{dir: dir}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("identity: keys: lock: %w", err)
	}
	defer unlock()
	names, err := k.files()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		if _, err := k.rotateLocked(); err != nil {
			return nil, err
		}
		return k, nil
	}
	return k, k.load(names)
}

// files lists the key files, oldest first (names start with a sortable
// timestamp).
func (k *Keys) files() ([]string, error) {
	names, err := filepath.Glob(filepath.Join(k.dir, "*.jwk"))
	if err != nil {
		return nil, fmt.Errorf("identity: keys: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

func (k *Keys) load(names []string) error {
	set := jwk.NewSet()
	var active jwk.Key
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("identity: keys: %w", err)
		}
		priv, err := jwk.ParseKey(b)
		if err != nil {
			return fmt.Errorf("identity: keys: %s: not a JWK", filepath.Base(name))
		}
		if _, ok := priv.(jwk.ECDSAPrivateKey); !ok {
			return fmt.Errorf("identity: keys: %s: not an EC private key", filepath.Base(name))
		}
		pub, err := priv.PublicKey()
		if err != nil {
			return fmt.Errorf("identity: keys: %s: %w", filepath.Base(name), err)
		}
		if err := set.AddKey(pub); err != nil {
			return fmt.Errorf("identity: keys: %w", err)
		}
		active = priv
	}
	kid, _ := active.KeyID()
	k.mu.Lock()
	k.active, k.kid, k.public = active, kid, set
	k.mu.Unlock()
	return nil
}

// Rotate generates a new key and makes it the active one; keys older than
// the KeepKeys newest are deleted. It returns the new key id.
func (k *Keys) Rotate() (string, error) {
	unlock, err := lockDir(k.dir)
	if err != nil {
		return "", fmt.Errorf("identity: keys: lock: %w", err)
	}
	defer unlock()
	return k.rotateLocked()
}

// rotateLocked is Rotate under the directory's lock.
func (k *Keys) rotateLocked() (string, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("identity: keys: %w", err)
	}
	priv, err := jwk.Import(raw)
	if err != nil {
		return "", fmt.Errorf("identity: keys: %w", err)
	}
	kid, err := JWKThumbprint(priv)
	if err != nil {
		return "", err
	}
	for _, kv := range [][2]any{{jwk.KeyIDKey, kid}, {jwk.AlgorithmKey, jwa.ES256()}, {jwk.KeyUsageKey, "sig"}} {
		if err := priv.Set(kv[0].(string), kv[1]); err != nil {
			return "", fmt.Errorf("identity: keys: %w", err)
		}
	}
	b, err := json.Marshal(priv)
	if err != nil {
		return "", fmt.Errorf("identity: keys: %w", err)
	}
	name := filepath.Join(k.dir, fmt.Sprintf("%020d-%s.jwk", time.Now().UnixNano(), kid))
	if err := writeFileAtomic(name, b, 0o600); err != nil {
		return "", fmt.Errorf("identity: keys: %w", err)
	}
	names, err := k.files()
	if err != nil {
		return "", err
	}
	for len(names) > KeepKeys {
		if err := os.Remove(names[0]); err != nil {
			return "", fmt.Errorf("identity: keys: %w", err)
		}
		names = names[1:]
	}
	return kid, k.load(names)
}

// Reload reads the keys in the directory again: another process sharing
// it (a replica of the gateway) rotated them.
func (k *Keys) Reload() error {
	names, err := k.files()
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("identity: keys: no key in %s", k.dir)
	}
	return k.load(names)
}

// JWKS returns the published public keys as a JWK Set document.
func (k *Keys) JWKS() ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return json.Marshal(k.public)
}

// PublicSet returns the published public keys.
func (k *Keys) PublicSet() jwk.Set {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.public
}

// KeyID returns the active key's id.
func (k *Keys) KeyID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.kid
}

// Sign signs claims (a JSON-encodable value) with the active key as a compact
// JWS with the given typ header.
func (k *Keys) Sign(typ string, claims any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("identity: sign: %w", err)
	}
	k.mu.RLock()
	key, kid := k.active, k.kid
	k.mu.RUnlock()
	if key == nil {
		return "", errors.New("identity: sign: no signing key")
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, typ); err != nil {
		return "", err
	}
	if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
		return "", err
	}
	out, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("identity: sign: %w", err)
	}
	return string(out), nil
}

// writeFileAtomic writes b to name through a temporary file and a rename, so
// that a reader never sees half a key.
func writeFileAtomic(name string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+strings.TrimSuffix(filepath.Base(name), filepath.Ext(name))+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}
