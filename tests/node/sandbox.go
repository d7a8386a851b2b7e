package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// sandboxImage writes the node's sandbox ("pause") image as an OCI
// image-layout tarball for `ctr images import`: one layer holding the static
// pause binary as /pause, its entrypoint. No registry is involved: the
// container runtime's sandbox_image names it and it is never pulled.
func sandboxImage(args []string) error {
	flags := flag.NewFlagSet("sandbox-image", flag.ContinueOnError)
	pause := flags.String("pause", "", "static pause binary (required)")
	name := flags.String("name", "", "image reference, e.g. localhost/pgw-pause:1 (required)")
	out := flags.String("out", "", "tarball to write (required)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *pause == "" || *name == "" || *out == "" {
		return errors.New("--pause, --name and --out are required")
	}
	binary, err := os.ReadFile(*pause)
	if err != nil {
		return err
	}
	// Fixed timestamps: the same binary gives the same image digest.
	epoch := time.Unix(0, 0).UTC()
	layer, err := tarball(epoch, file{"pause", 0o755, binary})
	if err != nil {
		return err
	}
	layerDigest := digest(layer)
	config, err := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/pause"}, "User": "65535:65535"},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	if err != nil {
		return err
	}
	tag := (*name)[strings.LastIndex(*name, ":")+1:]
	manifestDescriptor := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	manifestDescriptor["annotations"] = map[string]string{
		"io.containerd.image.name":          *name,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{manifestDescriptor},
	})
	if err != nil {
		return err
	}
	image, err := tarball(epoch,
		file{"oci-layout", 0o644, []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		file{"index.json", 0o644, index},
		blob(config), blob(manifest), blob(layer),
	)
	if err != nil {
		return err
	}
	return os.WriteFile(*out, image, 0o644)
}

type file struct {
	name string
	mode int64
	data []byte
}

func digest(data []byte) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(data))
}

func descriptor(mediaType string, data []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(data), "size": len(data)}
}

func blob(data []byte) file {
	return file{"blobs/sha256/" + strings.TrimPrefix(digest(data), "sha256:"), 0o644, data}
}

// tarball is a tar archive of files, owned by root, with parent directories.
func tarball(mtime time.Time, files ...file) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		parts := strings.Split(f.name, "/")
		for i := 1; i < len(parts); i++ {
			dir := strings.Join(parts[:i], "/") + "/"
			if dirs[dir] {
				continue
			}
			dirs[dir] = true
			if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime}); err != nil {
				return nil, err
			}
		}
		header := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime}
		if err := w.WriteHeader(header); err != nil {
			return nil, err
		}
		if _, err := w.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
