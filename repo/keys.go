package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// Encryption of a repository (see docs/encryption.md and docs/format.md):
//
//	keys/<id>        key files (package crypto): the master key sealed under a password
//	config.secrets   Seal({"chunker_polynomial": hex}, AD "stasis-config\x00" + repository id)
//	blob in a pack   Seal(stored bytes, AD = type byte || blob id)
//	pack header      Seal(header, AD "stasis-pack-header")
//	snapshots/<id>   Seal(snapshot JSON, AD "stasis-snapshot"); id = BLAKE3 of the sealed bytes
//
// An unencrypted repository (InitOptions.InsecureNoPassword) has no keys/
// and stores all of these in the clear.

// Additional data of sealed repository messages. Each kind of message has
// its own, so that a ciphertext cannot be moved to a place of another kind.
var (
	adPackHeader = []byte("stasis-pack-header")
	adSnapshot   = []byte("stasis-snapshot")
)

func adConfig(repoID string) []byte { return []byte("stasis-config\x00" + repoID) }

// adBlob is the additional data of a blob: its type byte and id.
func adBlob(t blob.Type, id blob.ID) [1 + len(blob.ID{})]byte {
	var ad [1 + len(blob.ID{})]byte
	ad[0] = byte(t)
	copy(ad[1:], id[:])
	return ad
}

// keysDir is the directory of key files.
const keysDir = "keys"

// maxKeyFileSize bounds what is read of a key file (real ones are < 1 KiB).
const maxKeyFileSize = 64 << 10

// configSecrets is the plaintext sealed in an encrypted config's secrets field.
type configSecrets struct {
	ChunkerPolynomial string `json:"chunker_polynomial"`
}

// KeyDefaultKDFTime is the time one argon2id derivation should take in a key
// file made with zero KDF parameters (InitOptions.KDF, AddKey).
const KeyDefaultKDFTime = 500 * time.Millisecond

func kdfOrDefault(p crypto.KDFParams) crypto.KDFParams {
	if p == (crypto.KDFParams{}) {
		return crypto.TuneKDF(KeyDefaultKDFTime)
	}
	return p
}

// newMasterKey returns the master key of a new repository: random, or with
// the id key fixed by InitOptions.IDKey (tests).
func newMasterKey(c Config) (*crypto.MasterKey, error) {
	if len(c.IDKey) == 0 {
		return crypto.NewMasterKey()
	}
	var id [crypto.KeySize]byte
	k, err := decodeIDKey(c.IDKey)
	if err != nil {
		return nil, err
	}
	copy(id[:], k)
	return crypto.NewMasterKeyWithIDKey(id)
}

// sealConfig returns the file form of an encrypted config: the secrets sealed
// with mk, the secret fields cleared.
func sealConfig(c Config, mk *crypto.MasterKey) (Config, error) {
	plain, err := json.Marshal(configSecrets{ChunkerPolynomial: c.ChunkerPolynomial})
	if err != nil {
		return c, err
	}
	c.Secrets = mk.Seal(nil, plain, adConfig(c.ID))
	c.ChunkerPolynomial, c.IDKey = "", ""
	return c, nil
}

// openConfig opens the secrets of an encrypted config with mk and returns
// the complete, validated config.
func openConfig(c Config, mk *crypto.MasterKey) (Config, error) {
	plain, err := mk.Open(nil, c.Secrets, adConfig(c.ID))
	if err != nil {
		return c, fmt.Errorf("config: sealed secrets do not open with the repository key (%w); the config file is damaged, restore it from a copy or tape", err)
	}
	var s configSecrets
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return c, fmt.Errorf("config: sealed secrets: %w", err)
	}
	c.ChunkerPolynomial = s.ChunkerPolynomial
	return c, c.validate()
}

// writeKeyFile seals mk under password into a new key file keys/<id> and
// returns its id.
func writeKeyFile(ctx context.Context, b backend.Storage, mk *crypto.MasterKey, password []byte, p crypto.KDFParams) (string, error) {
	data, err := crypto.NewKeyFile(mk, password, p)
	if err != nil {
		return "", err
	}
	info, err := crypto.ParseKeyFile(data)
	if err != nil {
		return "", err
	}
	name := path.Join(keysDir, info.ID)
	if err := backend.PutBytes(ctx, b, name, data); err != nil {
		return "", fmt.Errorf("write key file %s: %w", name, err)
	}
	return info.ID, nil
}

// unlock finds the key file that password opens and returns the master key
// and the key file's id. No match gives an error matching
// crypto.ErrWrongPassword that names the repository.
func unlock(ctx context.Context, b backend.Storage, dir string, password []byte) (*crypto.MasterKey, string, error) {
	ents, err := backend.ListNames(ctx, b, keysDir+"/")
	if err != nil {
		return nil, "", fmt.Errorf("list key files of %s: %w", dir, err)
	}
	var bad []string
	for _, name := range ents {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		data, err := backend.ReadAll(ctx, b, name, maxKeyFileSize)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		mk, err := crypto.OpenKeyFile(data, password)
		if errors.Is(err, crypto.ErrWrongPassword) {
			continue
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		info, _ := crypto.ParseKeyFile(data)
		return mk, info.ID, nil
	}
	if len(ents) == 0 {
		return nil, "", fmt.Errorf("repository %s is encrypted but has no key files in %s/ (restore them from a copy or tape)", dir, keysDir)
	}
	msg := ""
	if len(bad) > 0 {
		msg = "; unreadable key files: " + strings.Join(bad, "; ")
	}
	return nil, "", fmt.Errorf("%w for repository %s (no key file matched)%s", crypto.ErrWrongPassword, dir, msg)
}

// Encrypted reports whether the repository encrypts what it stores.
func (r *Repository) Encrypted() bool { return r.mk != nil }

// KeyID returns the id of the key file that opened the repository, or ""
// for an unencrypted one.
func (r *Repository) KeyID() string { return r.keyID }

// Key describes one key file of the repository.
type Key struct {
	crypto.KeyInfo
	// Current is true for the key file that opened this Repository.
	Current bool
}

// Keys lists the key files of an encrypted repository, sorted by creation
// time. A key file that cannot be parsed is an error naming it.
func (r *Repository) Keys(ctx context.Context) ([]Key, error) {
	if r.mk == nil {
		return nil, fmt.Errorf("repository %s is not encrypted: it has no keys", r.loc)
	}
	ents, err := backend.ListNames(ctx, r.st, keysDir+"/")
	if err != nil {
		return nil, fmt.Errorf("list key files of %s: %w", r.loc, err)
	}
	var keys []Key
	for _, name := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := backend.ReadAll(ctx, r.st, name, maxKeyFileSize)
		if err != nil {
			return nil, fmt.Errorf("read key file %s: %w", name, err)
		}
		info, err := crypto.ParseKeyFile(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		keys = append(keys, Key{KeyInfo: info, Current: info.ID == r.keyID})
	}
	sort.Slice(keys, func(i, j int) bool {
		if !keys[i].Created.Equal(keys[j].Created) {
			return keys[i].Created.Before(keys[j].Created)
		}
		return keys[i].ID < keys[j].ID
	})
	return keys, nil
}

// AddKey writes a new key file that opens the repository with password and
// returns its id. Zero p means crypto.TuneKDF(KeyDefaultKDFTime).
func (r *Repository) AddKey(ctx context.Context, password []byte, p crypto.KDFParams) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if r.mk == nil {
		return "", fmt.Errorf("repository %s is not encrypted: a password cannot be added (make a new, encrypted repository)", r.loc)
	}
	id, err := writeKeyFile(ctx, r.st, r.mk, password, kdfOrDefault(p))
	if err != nil {
		return "", fmt.Errorf("add key to %s: %w", r.loc, err)
	}
	return id, nil
}

// FindKey resolves a key id or a unique prefix of one.
func (r *Repository) FindKey(ctx context.Context, ref string) (Key, error) {
	keys, err := r.Keys(ctx)
	if err != nil {
		return Key{}, err
	}
	var found []Key
	for _, k := range keys {
		if ref != "" && strings.HasPrefix(k.ID, strings.ToLower(ref)) {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return Key{}, fmt.Errorf("key %q: no such key file in %s (list them with `stasis key list`)", ref, r.loc)
	case 1:
		return found[0], nil
	}
	return Key{}, fmt.Errorf("key %q is ambiguous (give more digits)", ref)
}

// RemoveKey removes key file id (or a unique prefix). Removing the last key
// file is refused (the repository could never be opened again), and so is
// removing the key file that opened this Repository: open it with another
// password to remove this one, or use ChangePassword.
func (r *Repository) RemoveKey(ctx context.Context, ref string) (string, error) {
	k, err := r.FindKey(ctx, ref)
	if err != nil {
		return "", err
	}
	keys, err := r.Keys(ctx)
	if err != nil {
		return "", err
	}
	if len(keys) <= 1 {
		return "", fmt.Errorf("key %s is the last key of %s: removing it would make the repository unreadable forever; add another key first", k.ID[:8], r.loc)
	}
	if k.ID == r.keyID {
		return "", fmt.Errorf("key %s is the key in use (its password opened %s): give another key's password to remove it, or use `stasis key passwd`", k.ID[:8], r.loc)
	}
	if err := r.removeKeyFile(ctx, k.ID); err != nil {
		return "", err
	}
	return k.ID, nil
}

func (r *Repository) removeKeyFile(ctx context.Context, id string) error {
	name := path.Join(keysDir, id)
	if err := r.st.Delete(ctx, name); err != nil {
		return fmt.Errorf("remove key file %s: %w", name, err)
	}
	return nil
}

// ChangePassword replaces the key file in use by a new one for password and
// returns the new key file's id; the new file is durable before the old one
// is removed, so a crash leaves one of the two passwords working (or both).
// Zero p means crypto.TuneKDF(KeyDefaultKDFTime).
func (r *Repository) ChangePassword(ctx context.Context, password []byte, p crypto.KDFParams) (string, error) {
	id, err := r.AddKey(ctx, password, p)
	if err != nil {
		return "", err
	}
	old := r.keyID
	if err := r.removeKeyFile(ctx, old); err != nil {
		return "", fmt.Errorf("new key %s written, but the old one stays: %w", id[:8], err)
	}
	r.keyID = id
	return id, nil
}

// sealBlob returns the pack form of a stored blob: sealed in an encrypted
// repository (into a pooled buffer; call the returned release once the bytes
// are written), stored as it is otherwise.
func (r *Repository) sealBlob(t blob.Type, id blob.ID, stored []byte) (sealed []byte, release func()) {
	ad := adBlob(t, id)
	return r.sealStored(stored, ad[:])
}

// sealStored seals the stored bytes of a frame with additional data ad
// into a pooled buffer (see sealBlob).
func (r *Repository) sealStored(stored, ad []byte) (sealed []byte, release func()) {
	if r.mk == nil {
		return stored, func() {}
	}
	buf, _ := r.sealBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	*buf = r.mk.Seal((*buf)[:0], stored, ad)
	return *buf, func() { r.sealBufs.Put(buf) }
}

// headerSeal and headerOpen are the pack.Transform of this repository; nil
// for an unencrypted one.
func (r *Repository) headerSeal() pack.Transform {
	if r.mk == nil {
		return nil
	}
	return func(h []byte) ([]byte, error) { return r.mk.Seal(nil, h, adPackHeader), nil }
}

func (r *Repository) headerOpen() pack.Transform {
	if r.mk == nil {
		return nil
	}
	return func(h []byte) ([]byte, error) { return r.mk.Open(nil, h, adPackHeader) }
}

// refuseKeysInPlainRepo fails when a repository whose config says it is
// unencrypted has key files. Init writes key files only into an encrypted
// repository (and only into an empty storage), and AddKey refuses an
// unencrypted one, so key files beside an unencrypted config mean that the
// config of an encrypted repository was edited or damaged: opening it as
// unencrypted would write plaintext (under an id key from the config) into
// a repository meant to be encrypted.
func refuseKeysInPlainRepo(ctx context.Context, b backend.Storage, dir string) error {
	errFound := errors.New("found")
	var first string
	err := b.List(ctx, keysDir+"/", func(oi backend.ObjectInfo) error {
		first = oi.Name
		return errFound
	})
	if errors.Is(err, errFound) {
		return fmt.Errorf("repository %s: its config says it is not encrypted, but it has key files (%s): "+
			"the repository is encrypted and its config was tampered with or damaged; "+
			"refusing to open it (it would store plaintext); restore config from a copy or tape", dir, first)
	}
	if err != nil {
		return fmt.Errorf("list key files of %s: %w", dir, err)
	}
	return nil
}
