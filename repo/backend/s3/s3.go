// Package s3 is a [backend.Storage] on S3-compatible object storage (Amazon
// S3, MinIO, SeaweedFS, Ceph RGW, …), through minio-go.
//
// A repository lives in one bucket, under an optional key prefix:
//
//	s3:https://s3.eu-central-1.amazonaws.com/my-bucket/some/prefix
//	s3:http://127.0.0.1:8333/my-bucket
//
// The object of repository name N is the key PREFIX/N (N without a
// prefix). Credentials come from the environment (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN for temporary credentials,
// AWS_REGION), never from the URL.
//
// # What the store must give
//
// Read-after-write consistency for new objects: once a PUT is acknowledged,
// every GET and HEAD of that key returns the new object (Amazon S3 since
// December 2020, MinIO, SeaweedFS). Listings may lag behind writes and
// deletes; the repository never concludes from a listing alone that an
// object it just wrote is missing. stasis never renames or copies objects:
// a PUT (single or multipart) is atomic in S3, the object appears only when
// the upload is complete, so a crash or a failed Put leaves no partial
// object, only (for a multipart upload that could not be aborted) an
// incomplete upload, which is not an object, is never listed, and which a
// bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up.
//
// # Retries
//
// Every request (Put as a whole, GET, HEAD, each page of a listing, DELETE,
// and Open's bucket check) is attempted at most Config.MaxAttempts times
// (default 6) with exponential backoff and jitter when it fails with
// throttling (503 SlowDown, 429, and the Throttling/RequestLimitExceeded
// codes), a 5xx status, a request timeout (408, RequestTimeout) or a
// connection error (refused, reset, timed out, unexpected EOF). Errors the
// server meant (404, 403, 400, 416, …), TLS certificate errors, errors from
// the data source of a Put and a cancelled context are not retried. Waits
// respect the context. minio-go's own retries are disabled, so the attempts
// are exactly these. A failed Put is retried as a whole, re-reading its
// io.ReaderAt from offset 0 (a multipart upload that fails in one part is
// aborted and started again). A List that fails after some pages resumes
// after the last key it delivered. Delays start at Config.RetryDelay
// (default 200ms) and double up to MaxRetryDelay, half of each random: six
// attempts wait between 3.1s and 6.2s in all before giving up.
package s3

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/stasisbackup/stasis/repo/backend"
)

// Defaults of Config's tuning fields.
const (
	// DefaultMaxAttempts is how many times an operation is attempted.
	DefaultMaxAttempts = 6
	// DefaultRetryDelay is the backoff before the second attempt; it
	// doubles with every further attempt, up to MaxRetryDelay.
	DefaultRetryDelay = 200 * time.Millisecond
	// MaxRetryDelay caps one backoff.
	MaxRetryDelay = 5 * time.Second
	// DefaultPartSize is the part size of multipart uploads: objects
	// larger than this are uploaded in parts of this size (a 16 MiB pack
	// in two parts), smaller ones with one PUT.
	DefaultPartSize = 8 << 20
)

// Environment variables Open reads the credentials and region from.
const (
	EnvAccessKeyID     = "AWS_ACCESS_KEY_ID"
	EnvSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	EnvSessionToken    = "AWS_SESSION_TOKEN"
	EnvRegion          = "AWS_REGION"
)

// ErrNoBucket is matched by the error of Open when the bucket does not
// exist and Config.CreateBucket is false.
var ErrNoBucket = errors.New("bucket does not exist")

// Config says where a repository is and how to reach it. Parse fills the
// location fields from a URL; Open fills empty credentials from the
// environment.
type Config struct {
	Endpoint string // host[:port]
	Secure   bool   // https (true) or http
	Bucket   string
	Prefix   string // key prefix without leading or trailing slash; "" for the bucket's root

	// Credentials. When AccessKeyID and SecretAccessKey are both empty,
	// Open takes all three from the environment (EnvAccessKeyID,
	// EnvSecretAccessKey, EnvSessionToken).
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Region of the bucket; "" takes EnvRegion, and when that is unset
	// too, minio-go asks the server for the bucket's location.
	Region string

	// CreateBucket makes Open create a missing bucket instead of failing
	// with ErrNoBucket.
	CreateBucket bool

	// MaxAttempts bounds the attempts of one request (0: DefaultMaxAttempts;
	// 1: no retries).
	MaxAttempts int
	// RetryDelay is the first backoff (0: DefaultRetryDelay).
	RetryDelay time.Duration
	// PartSize is the multipart upload part size (0: DefaultPartSize;
	// S3 requires at least 5 MiB).
	PartSize int64
}

// Parse parses a repository URL "s3:http://HOST[:PORT]/BUCKET[/PREFIX]" or
// "s3:https://…". A trailing slash is ignored ("…/bucket/" is the bucket's
// root, "…/bucket/a/b/" the prefix "a/b").
func Parse(s string) (Config, error) {
	const form = "s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]"
	bad := func(why string) (Config, error) {
		return Config{}, fmt.Errorf("s3 URL %q: %s (the form is %s)", s, why, form)
	}
	rest, ok := strings.CutPrefix(s, "s3:")
	if !ok {
		return bad("does not start with s3:")
	}
	u, err := url.Parse(rest)
	if err != nil {
		return bad(err.Error())
	}
	var cfg Config
	switch u.Scheme {
	case "http":
	case "https":
		cfg.Secure = true
	case "":
		return bad("no http:// or https:// after s3:")
	default:
		return bad(fmt.Sprintf("scheme %q is neither http nor https", u.Scheme))
	}
	if u.User != nil {
		return bad(fmt.Sprintf("credentials do not belong in the URL; set %s and %s", EnvAccessKeyID, EnvSecretAccessKey))
	}
	if u.Host == "" || u.Hostname() == "" {
		return bad("no host")
	}
	if u.Opaque != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return bad("unexpected query or fragment")
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return bad(fmt.Sprintf("bad port %q", p))
		}
	}
	cfg.Endpoint = u.Host
	p := strings.TrimPrefix(u.Path, "/")
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return bad("no bucket")
	}
	bucket, prefix, _ := strings.Cut(p, "/")
	if err := s3utils.CheckValidBucketName(bucket); err != nil {
		return bad(fmt.Sprintf("bucket %q: %v", bucket, err))
	}
	if prefix != "" && !backend.ValidName(prefix) {
		return bad(fmt.Sprintf("prefix %q has an empty, \".\" or \"..\" element", prefix))
	}
	cfg.Bucket, cfg.Prefix = bucket, prefix
	return cfg, nil
}

// URL returns the repository URL of cfg (without credentials), which Parse
// parses back into the same location.
func (cfg Config) URL() string {
	scheme := "http"
	if cfg.Secure {
		scheme = "https"
	}
	u := "s3:" + scheme + "://" + cfg.Endpoint + "/" + cfg.Bucket
	if cfg.Prefix != "" {
		u += "/" + cfg.Prefix
	}
	return u
}

// Storage is a backend.Storage in an S3 bucket. It is safe for concurrent
// use.
type Storage struct {
	cfg      Config
	client   *minio.Client
	core     minio.Core
	loc      string
	attempts int
	delay    time.Duration
	partSize int64
}

var _ backend.Storage = (*Storage)(nil)

// Open connects to the bucket of cfg. It checks that the credentials are
// accepted and the bucket exists (creating it when cfg.CreateBucket is
// set); a missing bucket gives an error matching ErrNoBucket.
func Open(ctx context.Context, cfg Config) (*Storage, error) {
	loc := cfg.URL()
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, fmt.Errorf("open %s: no endpoint or bucket", loc)
	}
	if cfg.AccessKeyID == "" && cfg.SecretAccessKey == "" {
		cfg.AccessKeyID = os.Getenv(EnvAccessKeyID)
		cfg.SecretAccessKey = os.Getenv(EnvSecretAccessKey)
		cfg.SessionToken = os.Getenv(EnvSessionToken)
		var missing []string
		if cfg.AccessKeyID == "" {
			missing = append(missing, EnvAccessKeyID)
		}
		if cfg.SecretAccessKey == "" {
			missing = append(missing, EnvSecretAccessKey)
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("open %s: no credentials: set %s in the environment (and %s for temporary credentials)",
				loc, strings.Join(missing, " and "), EnvSessionToken)
		}
	} else if cfg.AccessKeyID == "" || cfg.SecretAccessKey == "" {
		return nil, fmt.Errorf("open %s: an access key ID needs a secret access key and vice versa", loc)
	}
	if cfg.Region == "" {
		cfg.Region = os.Getenv(EnvRegion)
	}
	s := &Storage{cfg: cfg, loc: loc, attempts: cfg.MaxAttempts, delay: cfg.RetryDelay, partSize: cfg.PartSize}
	if s.attempts <= 0 {
		s.attempts = DefaultMaxAttempts
	}
	if s.delay <= 0 {
		s.delay = DefaultRetryDelay
	}
	if s.partSize <= 0 {
		s.partSize = DefaultPartSize
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", loc, err)
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken),
		Secure:     cfg.Secure,
		Region:     cfg.Region,
		Transport:  tr,
		MaxRetries: 1, // the retries are ours (see the package comment)
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", loc, err)
	}
	s.client = client
	s.core = minio.Core{Client: client}

	var exists bool
	err = s.retry(ctx, func() error {
		var err error
		exists, err = client.BucketExists(ctx, cfg.Bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: check bucket %s: %w", loc, cfg.Bucket, err)
	}
	if !exists {
		if !cfg.CreateBucket {
			return nil, fmt.Errorf("open %s: %w: %s", loc, ErrNoBucket, cfg.Bucket)
		}
		err := s.retry(ctx, func() error {
			return client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
		})
		if err != nil {
			if c := minio.ToErrorResponse(err).Code; c != "BucketAlreadyOwnedByYou" && c != "BucketAlreadyExists" {
				return nil, fmt.Errorf("open %s: create bucket %s: %w", loc, cfg.Bucket, err)
			}
		}
	}
	return s, nil
}

// Location implements backend.Storage: the repository URL, without
// credentials.
func (s *Storage) Location() string { return s.loc }

// Config returns the configuration s was opened with, credentials
// included.
func (s *Storage) Config() Config { return s.cfg }

func (s *Storage) key(name string) string {
	if s.cfg.Prefix == "" {
		return name
	}
	return s.cfg.Prefix + "/" + name
}

// obj names an object in errors.
func (s *Storage) obj(name string) string { return s.loc + "/" + name }

// fail wraps err of operation op on object name, so that a missing object
// matches backend.ErrNotExist.
func (s *Storage) fail(op, name string, err error) error {
	if err == nil {
		return nil
	}
	if isNotExist(err) {
		return fmt.Errorf("%s %s: %w (%w)", op, s.obj(name), backend.ErrNotExist, err)
	}
	return fmt.Errorf("%s %s: %w", op, s.obj(name), err)
}

func isNotExist(err error) bool {
	var r minio.ErrorResponse
	if !asErrorResponse(err, &r) {
		return false
	}
	switch r.Code {
	case minio.NoSuchKey, minio.NoSuchBucket, "NotFound":
		return true
	}
	return r.StatusCode == http.StatusNotFound
}

func asErrorResponse(err error, r *minio.ErrorResponse) bool {
	if errors.As(err, r) {
		return true
	}
	var p *minio.ErrorResponse
	if errors.As(err, &p) && p != nil {
		*r = *p
		return true
	}
	return false
}

// permanentError marks an error that must not be retried.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// retryable reports whether err, from a request made with ctx, is worth
// another attempt.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if errors.As(err, new(permanentError)) {
		return false
	}
	var r minio.ErrorResponse
	if asErrorResponse(err, &r) {
		switch r.Code {
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "Throttling", "ThrottlingException",
			"RequestLimitExceeded", "RequestThrottled", "TooManyRequests", "RequestTimeout",
			"InternalError", "ServiceUnavailable":
			return true
		}
		return r.StatusCode == http.StatusRequestTimeout || r.StatusCode == http.StatusTooManyRequests ||
			r.StatusCode >= 500 && r.StatusCode <= 599
	}
	// TLS trust problems and talking https to an http server do not heal.
	var (
		unknownAuth x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalid     x509.CertificateInvalidError
	)
	if errors.As(err, &unknownAuth) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true // a transport timeout; the caller's context is still live
	}
	var ue *url.Error
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

// retry calls fn until it succeeds, fails with an error that is not
// retryable, or has been attempted s.attempts times; it waits between
// attempts, returning early when ctx is done.
func (s *Storage) retry(ctx context.Context, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		if attempt >= s.attempts || !retryable(ctx, err) {
			if attempt > 1 {
				return fmt.Errorf("%w (after %d attempts)", err, attempt)
			}
			return err
		}
		t := time.NewTimer(s.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retrying after attempt %d of: %v)", ctx.Err(), attempt, err)
		case <-t.C:
		}
	}
}

// backoff returns the wait after the given failed attempt: RetryDelay
// doubled per attempt, capped, with "equal jitter" (half fixed, half
// random), so concurrent clients spread out and the wait never collapses
// to zero.
func (s *Storage) backoff(attempt int) time.Duration {
	d := s.delay << (attempt - 1)
	if d > MaxRetryDelay || d <= 0 {
		d = MaxRetryDelay
	}
	return d/2 + rand.N(d/2+1)
}

// Put implements backend.Storage. An object larger than the part size is
// uploaded in parts (in parallel, reading r with ReadAt from several
// goroutines); either way the object appears only when it is complete.
func (s *Storage) Put(ctx context.Context, name string, r io.ReaderAt, size int64) error {
	if !backend.ValidName(name) {
		return fmt.Errorf("put %q: invalid object name", name)
	}
	if size < 0 {
		return fmt.Errorf("put %s: negative size %d", s.obj(name), size)
	}
	err := s.retry(ctx, func() error {
		src := &source{r: r, size: size}
		_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.key(name), io.NewSectionReader(src, 0, size), size,
			minio.PutObjectOptions{
				PartSize:    uint64(s.partSize),
				ContentType: "application/octet-stream",
			})
		if serr := src.failure(); serr != nil {
			return permanentError{fmt.Errorf("read the data: %w", serr)}
		}
		return err
	})
	return s.fail("put", name, err)
}

// source is the io.ReaderAt of one Put attempt. It remembers a failure of
// the caller's reader (an error, or fewer than size bytes), which is not
// the storage's fault and is not retried.
type source struct {
	r    io.ReaderAt
	size int64

	mu  sync.Mutex
	err error
}

func (s *source) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	clamped := false
	if rest := s.size - off; int64(len(p)) > rest {
		p, clamped = p[:rest], true
	}
	n, err := s.r.ReadAt(p, off)
	if n == len(p) {
		if clamped {
			return n, io.EOF
		}
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("the data ended at byte %d of %d: %w", off+int64(n), s.size, io.ErrUnexpectedEOF)
	}
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	return n, err
}

func (s *source) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Get implements backend.Storage with a ranged GET. A range starting at or
// beyond the end of the object (416 InvalidRange) gives an empty reader.
func (s *Storage) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if !backend.ValidName(name) {
		return nil, fmt.Errorf("get %q: invalid object name", name)
	}
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", s.obj(name), off)
	}
	if length == 0 {
		if _, err := s.head(ctx, name); err != nil {
			return nil, s.fail("get", name, err)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	var opts minio.GetObjectOptions
	switch {
	case off == 0 && length < 0:
	case length < 0:
		err := opts.SetRange(off, 0)
		if err != nil {
			return nil, s.fail("get", name, err)
		}
	default:
		end := off + length - 1
		if end < off { // overflow: to the end
			end = 0
		}
		if err := opts.SetRange(off, end); err != nil {
			return nil, s.fail("get", name, err)
		}
	}
	var body io.ReadCloser
	err := s.retry(ctx, func() error {
		rc, _, _, err := s.core.GetObject(ctx, s.cfg.Bucket, s.key(name), opts)
		body = rc
		return err
	})
	if err != nil {
		var r minio.ErrorResponse
		if asErrorResponse(err, &r) && (r.StatusCode == http.StatusRequestedRangeNotSatisfiable || r.Code == "InvalidRange") {
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, s.fail("get", name, err)
	}
	return &objectReader{rc: body, name: s.obj(name)}, nil
}

// objectReader names the object in errors of reading a GET's body.
type objectReader struct {
	rc   io.ReadCloser
	name string
}

func (b *objectReader) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read %s: %w", b.name, err)
	}
	return n, err
}

func (b *objectReader) Close() error { return b.rc.Close() }

// Stat implements backend.Storage with a HEAD request. ModTime is the
// server's Last-Modified (whole seconds).
func (s *Storage) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if !backend.ValidName(name) {
		return backend.ObjectInfo{}, fmt.Errorf("stat %q: invalid object name", name)
	}
	info, err := s.head(ctx, name)
	if err != nil {
		return backend.ObjectInfo{}, s.fail("stat", name, err)
	}
	return backend.ObjectInfo{Name: name, Size: info.Size, ModTime: info.LastModified}, nil
}

func (s *Storage) head(ctx context.Context, name string) (minio.ObjectInfo, error) {
	var info minio.ObjectInfo
	err := s.retry(ctx, func() error {
		var err error
		info, err = s.client.StatObject(ctx, s.cfg.Bucket, s.key(name), minio.StatObjectOptions{})
		return err
	})
	return info, err
}

// List implements backend.Storage with ListObjectsV2. A page that fails is
// retried, resuming after the last key delivered, so fn never sees a name
// twice. Keys under the prefix that are not repository names (directory
// markers ending in "/", foreign objects) are skipped.
func (s *Storage) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	full := s.key(prefix)
	if prefix == "" && s.cfg.Prefix != "" {
		full = s.cfg.Prefix + "/"
	}
	strip := ""
	if s.cfg.Prefix != "" {
		strip = s.cfg.Prefix + "/"
	}
	var last string // the last key seen
	var fnErr error
	listOnce := func() error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := s.client.ListObjects(lctx, s.cfg.Bucket, minio.ListObjectsOptions{
			Prefix:     full,
			Recursive:  true,
			StartAfter: last,
		})
		for o := range ch {
			if o.Err != nil {
				return o.Err
			}
			last = o.Key
			name, ok := strings.CutPrefix(o.Key, strip)
			if !ok || !strings.HasPrefix(name, prefix) || !backend.ValidName(name) {
				continue
			}
			if err := fn(backend.ObjectInfo{Name: name, Size: o.Size, ModTime: o.LastModified}); err != nil {
				fnErr = err
				return permanentError{err}
			}
		}
		return ctx.Err()
	}
	err := s.retry(ctx, listOnce)
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("list %s in %s: %w", prefix, s.loc, err)
	}
	return nil
}

// Delete implements backend.Storage. S3 acknowledges the DELETE of a
// missing key like any other, so Delete stats the object first to return
// an error matching backend.ErrNotExist for a missing one.
func (s *Storage) Delete(ctx context.Context, name string) error {
	if !backend.ValidName(name) {
		return fmt.Errorf("delete %q: invalid object name", name)
	}
	if _, err := s.head(ctx, name); err != nil {
		return s.fail("delete", name, err)
	}
	err := s.retry(ctx, func() error {
		return s.client.RemoveObject(ctx, s.cfg.Bucket, s.key(name), minio.RemoveObjectOptions{})
	})
	return s.fail("delete", name, err)
}
