// Package crypto holds the encryption primitives of a stasis repository: the
// master key (a data-encryption key and the BLAKE3 id key), authenticated
// encryption of blobs and files with XChaCha20-Poly1305, and
// password-protected key files (argon2id). The password comes from the caller, as bytes (the
// CLI's password policy is cmd/stasis/internal/password).
//
// # Sealed messages
//
// [MasterKey.Seal] turns a plaintext into nonce || ciphertext || tag, where the
// nonce is 24 random bytes drawn for every message and the tag is the 16-byte
// Poly1305 tag; a sealed message is always exactly len(plaintext)+[Overhead]
// bytes. [MasterKey.Open] reverses it and fails with an error matching
// [ErrAuthFailed] when a single bit of the message, or of the additional data it
// was sealed with, differs. Callers should pass as additional data whatever
// names the message (for example a blob's type and id, or a file's kind and
// name), so that a valid ciphertext cannot be moved to another place unnoticed.
//
// # Key files
//
// A key file is a small JSON document (see [NewKeyFile]) holding the master key
// sealed under a key derived from a password with argon2id. A repository may
// hold several key files, one per password, all wrapping the same master key.
//
// # Errors
//
// The sentinel errors of this package are [ErrAuthFailed], [ErrWrongPassword]
// and [ErrNoPassword]; match them with errors.Is.
//
// The format is described in docs/encryption.md.
package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Sizes of keys and of the parts of a sealed message, in bytes.
const (
	// KeySize is the size of the data-encryption key and of the id key.
	KeySize = 32
	// NonceSize is the size of the random nonce that starts every sealed message.
	NonceSize = chacha20poly1305.NonceSizeX
	// TagSize is the size of the Poly1305 authentication tag that ends it.
	TagSize = chacha20poly1305.Overhead
	// Overhead is how many bytes Seal adds to a plaintext: NonceSize + TagSize.
	Overhead = NonceSize + TagSize
)

// ErrAuthFailed means a sealed message did not authenticate: it was modified,
// truncated, sealed with another key or with other additional data. Nothing of
// its content is returned. Callers report it as damage of the object it came from.
var ErrAuthFailed = errors.New("authentication failed (data damaged or modified, or wrong key)")

// MasterKey is the secret of one repository: a random key that encrypts every
// blob and file (EncryptionKey) and a random key with which chunk ids are keyed
// BLAKE3 hashes (IDKey). It never changes for the life of a repository; key
// files wrap it under passwords.
//
// A MasterKey is safe for concurrent use by several goroutines.
type MasterKey struct {
	enc  [KeySize]byte
	id   [KeySize]byte
	aead cipher.AEAD
}

// NewMasterKey returns a master key with both keys drawn from crypto/rand.
func NewMasterKey() (*MasterKey, error) {
	var enc, id [KeySize]byte
	rand.Read(enc[:]) // never returns an error; crashes the program if the OS has no randomness
	rand.Read(id[:])
	return newMasterKey(enc, id)
}

// NewMasterKeyWithIDKey returns a master key with a random encryption key
// and the given id key. It exists so that tests can make repositories whose
// blob ids are the same in every run; real repositories use NewMasterKey.
func NewMasterKeyWithIDKey(idKey [KeySize]byte) (*MasterKey, error) {
	var enc [KeySize]byte
	rand.Read(enc[:])
	return newMasterKey(enc, idKey)
}

func newMasterKey(enc, id [KeySize]byte) (*MasterKey, error) {
	aead, err := chacha20poly1305.NewX(enc[:])
	if err != nil {
		return nil, fmt.Errorf("set up XChaCha20-Poly1305: %w", err)
	}
	return &MasterKey{enc: enc, id: id, aead: aead}, nil
}

// IDKey returns the 32-byte key with which chunk ids are computed as keyed
// BLAKE3 (blake3.NewKeyed(key[:])), so that ids do not reveal content to
// anyone without the key.
func (k *MasterKey) IDKey() [KeySize]byte { return k.id }

// Equal reports, in constant time, whether k and o hold the same two keys.
func (k *MasterKey) Equal(o *MasterKey) bool {
	return subtle.ConstantTimeCompare(k.enc[:], o.enc[:])&subtle.ConstantTimeCompare(k.id[:], o.id[:]) == 1
}

// Seal encrypts and authenticates plaintext together with additionalData
// (which is authenticated but not encrypted, nor stored) and appends
// nonce || ciphertext || tag, len(plaintext)+Overhead bytes, to dst, returning
// the extended slice. The nonce is random for every call. dst and plaintext
// must not overlap. Seal allocates only when dst lacks capacity.
func (k *MasterKey) Seal(dst, plaintext, additionalData []byte) []byte {
	ret, out := grow(dst, len(plaintext)+Overhead)
	nonce := out[:NonceSize]
	rand.Read(nonce)
	k.aead.Seal(out[NonceSize:NonceSize], nonce, plaintext, additionalData)
	return ret
}

// Open authenticates and decrypts sealed, a message made by Seal with the same
// additionalData, and appends the plaintext to dst, returning the extended
// slice. Any modification or truncation of sealed, another key or other
// additional data gives an error matching ErrAuthFailed, and dst's contents
// up to its length are left as they were. dst and sealed must not overlap.
// Open allocates only when dst lacks capacity.
func (k *MasterKey) Open(dst, sealed, additionalData []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return dst, fmt.Errorf("%w: %d bytes is shorter than the %d-byte nonce and tag", ErrAuthFailed, len(sealed), Overhead)
	}
	out, err := k.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], additionalData)
	if err != nil {
		return dst, ErrAuthFailed
	}
	return out, nil
}

// grow extends in by n bytes, reallocating only when its capacity is too
// small, and returns the whole slice and the n new bytes.
func grow(in []byte, n int) (whole, tail []byte) {
	total := len(in) + n
	if cap(in) >= total {
		whole = in[:total]
	} else {
		whole = make([]byte, total)
		copy(whole, in)
	}
	return whole, whole[len(in):]
}
