package identity

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters of new password hashes: RFC 9106 §4's second
// recommended option (64 MiB, 3 passes), with 4 lanes.
const (
	argonTime    = 3
	argonMemory  = 64 << 10 // KiB
	argonThreads = 4
	argonKeyLen  = 32
	argonSaltLen = 16
)

// HashPassword returns an argon2id hash of password in the PHC string
// format ($argon2id$v=19$m=…,t=…,p=…$salt$hash), for the local user store.
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errors.New("identity: empty password")
	}
	salt := make([]byte, argonSaltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// passwordHash is a parsed argon2id PHC string.
type passwordHash struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

// parsePasswordHash parses a PHC argon2id string, refusing parameters that
// would make one sign-in cost more than a gateway should spend (over 1 GiB
// or 16 passes) or a hash too weak to be one.
func parsePasswordHash(s string) (*passwordHash, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return nil, errors.New("not an argon2id hash ($argon2id$v=19$m=…,t=…,p=…$salt$hash)")
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return nil, fmt.Errorf("argon2id version must be %d", argon2.Version)
	}
	h := &passwordHash{}
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.memory, &h.time, &h.threads); err != nil || n != 3 {
		return nil, errors.New("argon2id parameters must be m=…,t=…,p=…")
	}
	if h.memory < 8*uint32(h.threads) || h.memory > 1<<20 || h.time < 1 || h.time > 16 || h.threads < 1 {
		return nil, errors.New("argon2id parameters out of range (m ≤ 1 GiB, 1 ≤ t ≤ 16, p ≥ 1)")
	}
	enc := base64.RawStdEncoding
	var err error
	if h.salt, err = enc.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
		return nil, errors.New("argon2id salt must be at least 8 bytes of unpadded base64")
	}
	if h.key, err = enc.DecodeString(parts[5]); err != nil || len(h.key) < 16 || len(h.key) > 64 {
		return nil, errors.New("argon2id hash must be 16-64 bytes of unpadded base64")
	}
	return h, nil
}

// matches reports whether password hashes to h, in constant time.
func (h *passwordHash) matches(password string) bool {
	key := argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(key, h.key) == 1
}

// LocalUser is one user of the local user store.
type LocalUser struct {
	Name string
	// PasswordHash is an argon2id PHC string (HashPassword).
	PasswordHash string
	Groups       []string
}

// Users is the local user store: a small set of users with argon2id
// password hashes, for development, the demo and small deployments.
type Users struct {
	users map[string]localUser
	// dummy is checked for unknown names, so that a sign-in takes as
	// long whether or not the name exists.
	dummy *passwordHash
}

type localUser struct {
	hash   *passwordHash
	groups []string
}

// NewUsers checks every user's hash and returns the store.
func NewUsers(list []LocalUser) (*Users, error) {
	u := &Users{users: map[string]localUser{}}
	for _, lu := range list {
		if lu.Name == "" {
			return nil, errors.New("identity: a local user needs a name")
		}
		if _, dup := u.users[lu.Name]; dup {
			return nil, fmt.Errorf("identity: local user %q listed twice", lu.Name)
		}
		h, err := parsePasswordHash(lu.PasswordHash)
		if err != nil {
			return nil, fmt.Errorf("identity: local user %q: %w", lu.Name, err)
		}
		u.users[lu.Name] = localUser{hash: h, groups: lu.Groups}
		if u.dummy == nil || h.memory > u.dummy.memory {
			u.dummy = &passwordHash{memory: h.memory, time: h.time, threads: h.threads, salt: make([]byte, len(h.salt)), key: make([]byte, len(h.key))}
		}
	}
	return u, nil
}

// Check returns the groups of name when password is theirs.
func (u *Users) Check(name, password string) ([]string, bool) {
	lu, ok := u.users[name]
	if !ok {
		if u.dummy != nil {
			u.dummy.matches(password)
		}
		return nil, false
	}
	if !lu.hash.matches(password) {
		return nil, false
	}
	return lu.groups, true
}
