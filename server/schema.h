/* schema.h - the migrations from schema/NNN_name.sql, compiled in by
 * scripts/embed-schema.sh. Migration i (0-based) takes PRAGMA user_version i to i+1. */
#ifndef HOOKRELAY_SCHEMA_H
#define HOOKRELAY_SCHEMA_H

extern const char *const schema_migrations[];
extern const int schema_migration_count;

#endif
