package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Settings the daemon keeps across restarts (the settings table).
const (
	// SettingNetwork is the guest network set through the API (PUT
	// /api/v1/network): it wins over volantd's --subnet.
	SettingNetwork = "network"
)

// GetSettingTx reads the JSON value of key into v; found is false when
// the key was never set.
func GetSettingTx(ctx context.Context, tx *sql.Tx, key string, v any) (found bool, err error) {
	var raw string
	err = tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading setting %s: %w", key, err)
	}
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		return false, fmt.Errorf("setting %s: %w", key, err)
	}
	return true, nil
}

// Setting reads the JSON value of key into v (found false when unset).
func (s *Store) Setting(ctx context.Context, key string, v any) (found bool, err error) {
	err = s.Read(ctx, func(tx *sql.Tx) error {
		found, err = GetSettingTx(ctx, tx, key, v)
		return err
	})
	return found, err
}

// SetSettingTx stores v, as JSON, as the value of key.
func SetSettingTx(ctx context.Context, tx *sql.Tx, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("setting %s: %w", key, err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, key, string(b), FormatTime(time.Now()))
	if err != nil {
		return fmt.Errorf("writing setting %s: %w", key, err)
	}
	return nil
}
