// zstdverify: checks a zstd:chunked blob with the Go reference reader (stargz-snapshotter 0.12
// estargz + estargz/zstdchunked, Debian's Go sources).
// usage: zstdverify BLOB [TOC_DIGEST]
// Opens the blob with the zstd:chunked decompressor only, verifies the TOC digest (when given),
// reads every regular file through the reference reader verifying every chunk digest, and checks
// that the whole blob decompresses (skippable frames skipped) to a tar whose regular files match.
// Prints "ok files=N bytes=M toc=DIGEST" or "FAIL: ..." with exit status 1.
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

func die(f string, a ...interface{}) { fmt.Fprintf(os.Stderr, "FAIL: "+f+"\n", a...); os.Exit(1) }

func main() {
	if len(os.Args) < 2 {
		die("usage: zstdverify BLOB [TOC_DIGEST]")
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		die("%v", err)
	}
	st, _ := f.Stat()
	sr := io.NewSectionReader(f, 0, st.Size())
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		die("estargz.Open (zstd:chunked): %v", err)
	}
	var v estargz.TOCEntryVerifier
	if len(os.Args) > 2 {
		v, err = r.VerifyTOC(digest.Digest(os.Args[2]))
		if err != nil {
			die("VerifyTOC: %v", err)
		}
	} else {
		v, err = r.Verifiers()
		if err != nil {
			die("Verifiers: %v", err)
		}
	}
	zr, err := zstd.NewReader(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		die("not zstd: %v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	files, total := 0, int64(0)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			die("tar: %v", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag != tar.TypeReg {
			if _, ok := r.Lookup(strings.TrimSuffix(name, "/")); !ok && name != "" {
				die("tar entry %q (type %c) missing from TOC", name, h.Typeflag)
			}
			continue
		}
		want, err := io.ReadAll(tr)
		if err != nil {
			die("tar read %s: %v", name, err)
		}
		e, ok := r.Lookup(name)
		if !ok {
			die("file %q missing from TOC", name)
		}
		if e.Size != h.Size {
			die("size of %q: toc %d tar %d", name, e.Size, h.Size)
		}
		fr, err := r.OpenFile(name)
		if err != nil {
			die("OpenFile %s: %v", name, err)
		}
		for off := int64(0); off < e.Size; {
			ce, ok := r.ChunkEntryForOffset(name, off)
			if !ok {
				die("no chunk for %s@%d", name, off)
			}
			dv, err := v.Verifier(ce)
			if err != nil {
				die("verifier %s@%d: %v", name, off, err)
			}
			n := ce.ChunkSize
			if n == 0 {
				n = e.Size - ce.ChunkOffset
			}
			buf := make([]byte, n)
			if _, err := fr.ReadAt(buf, ce.ChunkOffset); err != nil && err != io.EOF {
				die("read %s@%d: %v", name, ce.ChunkOffset, err)
			}
			dv.Write(buf)
			if !dv.Verified() {
				die("chunk digest mismatch %s@%d", name, ce.ChunkOffset)
			}
			if !bytes.Equal(buf, want[ce.ChunkOffset:ce.ChunkOffset+n]) {
				die("content mismatch %s@%d", name, ce.ChunkOffset)
			}
			off = ce.ChunkOffset + n
		}
		files++
		total += h.Size
	}
	fmt.Printf("ok files=%d bytes=%d toc=%s\n", files, total, r.TOCDigest())
}
