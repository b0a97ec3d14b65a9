package crypto

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"runtime/debug"
	"time"

	"golang.org/x/crypto/argon2"
)

// ErrWrongPassword means a well-formed key file did not open with the password
// given: either the password is wrong or the sealed key in the file was
// modified (the two cannot be told apart). Nothing was decrypted.
var ErrWrongPassword = errors.New("wrong password")

// ErrNoPassword means no password was given for an encrypted repository
// (the CLI: no password source was set and there is no terminal to ask on).
// Its message lists the CLI's sources.
var ErrNoPassword = errors.New("no password given")

// Key file format constants.
const (
	// KeyFileFormat is the value of the "format" field of every key file.
	KeyFileFormat = "stasis-key"
	// KeyFileVersion is the only key file version this package reads and writes.
	KeyFileVersion = 1
	// KDFArgon2id is the only key derivation function this package knows.
	KDFArgon2id = "argon2id"
	// SaltSize is the size of the random salt written into new key files.
	SaltSize = 32
)

// Bounds enforced on KDF parameters read from a key file, so that a hostile
// file cannot make stasis allocate or compute without bound.
const (
	MaxKDFTime      = 64
	MaxKDFMemoryKiB = 4 << 20 // 4 GiB
	MaxKDFThreads   = 64
	// MaxKDFWork bounds Time*MemoryKiB: 16 GiB of memory passes, a few seconds.
	MaxKDFWork = 16 << 20
	// MinTunedMemoryKiB is the least memory TuneKDF picks: 64 MiB.
	MinTunedMemoryKiB = 64 << 10
	// maxTunedMemoryKiB is the most memory TuneKDF picks before it raises
	// Time. It equals the floor: every stasis command that opens an
	// encrypted repository derives the key once, and a larger setting would
	// dominate the peak memory of a backup (256 MiB did; see
	// docs/benchmarks.md). The budget goes to passes instead.
	maxTunedMemoryKiB = 64 << 10
)

// KDFParams are the argon2id cost parameters stored in a key file.
type KDFParams struct {
	// Time is the number of passes over the memory (argon2 "t").
	Time uint32 `json:"time"`
	// MemoryKiB is the memory used, in KiB (argon2 "m").
	MemoryKiB uint32 `json:"memory_kib"`
	// Threads is the parallelism (argon2 "p").
	Threads uint8 `json:"threads"`
}

// TestKDFParams is a cheap setting (64 KiB, one pass) for tests only: key files
// made with it protect nothing against guessing.
var TestKDFParams = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// Validate returns an error if p is outside the bounds this package accepts
// (at least one pass and thread, at least 8 KiB per thread, at most
// MaxKDFTime, MaxKDFMemoryKiB, MaxKDFThreads and MaxKDFWork).
func (p KDFParams) Validate() error {
	switch {
	case p.Time < 1 || p.Time > MaxKDFTime:
		return fmt.Errorf("argon2id time %d out of range 1..%d", p.Time, MaxKDFTime)
	case p.Threads < 1 || p.Threads > MaxKDFThreads:
		return fmt.Errorf("argon2id threads %d out of range 1..%d", p.Threads, MaxKDFThreads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > MaxKDFMemoryKiB:
		return fmt.Errorf("argon2id memory %d KiB out of range %d..%d KiB", p.MemoryKiB, 8*uint32(p.Threads), MaxKDFMemoryKiB)
	case uint64(p.Time)*uint64(p.MemoryKiB) > MaxKDFWork:
		return fmt.Errorf("argon2id work time*memory = %d*%d KiB exceeds %d KiB", p.Time, p.MemoryKiB, MaxKDFWork)
	}
	return nil
}

func (p KDFParams) derive(password, salt []byte) []byte {
	k := argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, KeySize)
	// Give the KDF's memory back to the OS now, so that it does not add to
	// the peak of the command that runs next (a backup).
	debug.FreeOSMemory()
	return k
}

// TuneKDF measures argon2id on this machine and returns parameters for which
// one derivation takes about target (≈0.5 s is the intended use): memory of at
// least 64 MiB (raised up to maxTunedMemoryKiB before passes are added), one thread per
// CPU up to 4, and as many passes as fit in target. On a slow machine the
// result may take longer than target; the floors win. The result always passes
// Validate. TuneKDF itself runs three derivations at the floor (64 MiB, one
// pass) and keeps the fastest.
func TuneKDF(target time.Duration) KDFParams {
	p := KDFParams{Time: 1, MemoryKiB: MinTunedMemoryKiB, Threads: uint8(min(runtime.NumCPU(), 4))}
	var salt [SaltSize]byte
	// The fastest of three runs: a busy machine only ever makes a run slower.
	d := time.Duration(1<<63 - 1)
	for range 3 {
		start := time.Now()
		p.derive([]byte("stasis kdf calibration"), salt[:])
		d = min(d, time.Since(start))
	}
	d = max(d, time.Millisecond)
	// Cost is about linear in memory and in passes: spend the budget on memory first.
	for p.MemoryKiB < maxTunedMemoryKiB && 2*d <= target {
		p.MemoryKiB *= 2
		d *= 2
	}
	if n := int64(target / d); n > 1 {
		p.Time = uint32(min(n, MaxKDFWork/int64(p.MemoryKiB), MaxKDFTime))
	}
	return p
}

// keyFile is the JSON form of a key file.
type keyFile struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	ID      string    `json:"id"`
	Created string    `json:"created"`
	Host    string    `json:"host"`
	User    string    `json:"user"`
	KDF     string    `json:"kdf"`
	Params  KDFParams `json:"kdf_params"`
	Salt    []byte    `json:"salt"`
	Data    []byte    `json:"data"`
}

// sealedMasterKey is the plaintext sealed in a key file's "data" field.
type sealedMasterKey struct {
	EncryptionKey []byte `json:"encryption_key"`
	IDKey         []byte `json:"id_key"`
}

// KeyInfo is what a key file says about itself without a password.
type KeyInfo struct {
	// ID is 64 hex digits, random, naming this key file (not the master key).
	ID string
	// Created is when the key file was made; Host and User where and by whom.
	// These three are informational and not authenticated.
	Created    time.Time
	Host, User string
	// KDF holds the argon2id parameters.
	KDF KDFParams
}

// keyAD is the additional data a key file's master key is sealed with: it
// binds the sealed key to the file's format, version and id.
func keyAD(id string) []byte {
	return []byte(fmt.Sprintf("%s\x00%d\x00%s", KeyFileFormat, KeyFileVersion, id))
}

// NewKeyFile returns a new key file (JSON, one object, trailing newline) that
// holds mk sealed under a key derived from password with argon2id and p, a
// fresh random salt and a fresh random id. host and user are taken from the
// system. The password must not be empty; p must pass Validate.
func NewKeyFile(mk *MasterKey, password []byte, p KDFParams) ([]byte, error) {
	if len(password) == 0 {
		return nil, errors.New("new key file: empty password refused")
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("new key file: %w", err)
	}
	var id [32]byte
	rand.Read(id[:])
	kf := keyFile{
		Format:  KeyFileFormat,
		Version: KeyFileVersion,
		ID:      hex.EncodeToString(id[:]),
		Created: time.Now().UTC().Format(time.RFC3339Nano),
		KDF:     KDFArgon2id,
		Params:  p,
		Salt:    make([]byte, SaltSize),
	}
	kf.Host, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		kf.User = u.Username
	}
	rand.Read(kf.Salt)

	plain, err := json.Marshal(sealedMasterKey{EncryptionKey: mk.enc[:], IDKey: mk.id[:]})
	if err != nil {
		return nil, fmt.Errorf("new key file: encode master key: %w", err)
	}
	defer clear(plain)
	wrap, err := wrappingKey(p, password, kf.Salt)
	if err != nil {
		return nil, fmt.Errorf("new key file: %w", err)
	}
	kf.Data = wrap.Seal(nil, plain, keyAD(kf.ID))

	out, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("new key file: encode: %w", err)
	}
	return append(out, '\n'), nil
}

// wrappingKey derives the key-file key from password and wraps it in a
// MasterKey whose id key is unused.
func wrappingKey(p KDFParams, password, salt []byte) (*MasterKey, error) {
	dk := p.derive(password, salt)
	defer clear(dk)
	var enc [KeySize]byte
	copy(enc[:], dk)
	return newMasterKey(enc, [KeySize]byte{})
}

// ParseKeyFile checks that data is a well-formed key file of a known format
// and version with acceptable KDF parameters, and returns what it says about
// itself. It needs no password and decrypts nothing.
func ParseKeyFile(data []byte) (KeyInfo, error) {
	kf, err := parseKeyFile(data, KDFParams.Validate)
	if err != nil {
		return KeyInfo{}, err
	}
	created, _ := time.Parse(time.RFC3339Nano, kf.Created)
	return KeyInfo{ID: kf.ID, Created: created, Host: kf.Host, User: kf.User, KDF: kf.Params}, nil
}

// OpenKeyFile checks data as ParseKeyFile does, derives the key from password
// and returns the master key sealed in it. A wrong password gives an error
// matching ErrWrongPassword; a malformed or unknown file, or hostile KDF
// parameters, give a different error saying what is wrong.
func OpenKeyFile(data, password []byte) (*MasterKey, error) {
	return openKeyFile(data, password, KDFParams.Validate)
}

// openKeyFile is OpenKeyFile with the parameter check given, so that fuzzing
// can keep the KDF cheap.
func openKeyFile(data, password []byte, validate func(KDFParams) error) (*MasterKey, error) {
	kf, err := parseKeyFile(data, validate)
	if err != nil {
		return nil, err
	}
	wrap, err := wrappingKey(kf.Params, password, kf.Salt)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", kf.ID, err)
	}
	plain, err := wrap.Open(nil, kf.Data, keyAD(kf.ID))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", kf.ID, ErrWrongPassword)
	}
	defer clear(plain)
	var smk sealedMasterKey
	if err := json.Unmarshal(plain, &smk); err != nil {
		return nil, fmt.Errorf("key file %s: decode master key: %w", kf.ID, err)
	}
	if len(smk.EncryptionKey) != KeySize || len(smk.IDKey) != KeySize {
		return nil, fmt.Errorf("key file %s: master key has %d+%d bytes, want %d+%d",
			kf.ID, len(smk.EncryptionKey), len(smk.IDKey), KeySize, KeySize)
	}
	var enc, id [KeySize]byte
	copy(enc[:], smk.EncryptionKey)
	copy(id[:], smk.IDKey)
	clear(smk.EncryptionKey)
	clear(smk.IDKey)
	return newMasterKey(enc, id)
}

// maxKeyFileSize bounds what parseKeyFile reads; real key files are < 1 KiB.
const maxKeyFileSize = 64 << 10

func parseKeyFile(data []byte, validate func(KDFParams) error) (*keyFile, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("key file: %d bytes, more than the %d a key file can have; is this a key file?", len(data), maxKeyFileSize)
	}
	var kf keyFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("key file: not a stasis key file (bad JSON: %v)", err)
	}
	if dec.More() {
		return nil, errors.New("key file: not a stasis key file (data after the JSON object)")
	}
	if kf.Format != KeyFileFormat {
		return nil, fmt.Errorf("key file: format %q, want %q", kf.Format, KeyFileFormat)
	}
	if kf.Version != KeyFileVersion {
		return nil, fmt.Errorf("key file %s: version %d is not supported (this stasis reads version %d); use a newer stasis", kf.ID, kf.Version, KeyFileVersion)
	}
	if len(kf.ID) != 64 {
		return nil, fmt.Errorf("key file: id %q is not 64 hex digits", kf.ID)
	}
	if _, err := hex.DecodeString(kf.ID); err != nil {
		return nil, fmt.Errorf("key file: id %q is not 64 hex digits", kf.ID)
	}
	if kf.KDF != KDFArgon2id {
		return nil, fmt.Errorf("key file %s: unknown kdf %q, want %q", kf.ID, kf.KDF, KDFArgon2id)
	}
	if err := validate(kf.Params); err != nil {
		return nil, fmt.Errorf("key file %s: refusing kdf parameters: %w", kf.ID, err)
	}
	if len(kf.Salt) < 16 || len(kf.Salt) > 64 {
		return nil, fmt.Errorf("key file %s: salt of %d bytes, want 16..64", kf.ID, len(kf.Salt))
	}
	if len(kf.Data) < Overhead || len(kf.Data) > 1024 {
		return nil, fmt.Errorf("key file %s: sealed key of %d bytes, want %d..1024", kf.ID, len(kf.Data), Overhead)
	}
	return &kf, nil
}
