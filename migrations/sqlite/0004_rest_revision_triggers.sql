-- A REST write and the revision bump that announces it commit together (see the Postgres
-- migration of the same number). One process per SQLite file, so this only matters for a
-- crash between the two statements; the triggers keep both backends alike.

CREATE TRIGGER IF NOT EXISTS api_specs_rest_revision_insert AFTER INSERT ON api_specs
    WHEN NEW.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS api_specs_rest_revision_update AFTER UPDATE ON api_specs
    WHEN NEW.source = 'rest' OR OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS api_specs_rest_revision_delete AFTER DELETE ON api_specs
    WHEN OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS workflows_rest_revision_insert AFTER INSERT ON workflows
    WHEN NEW.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS workflows_rest_revision_update AFTER UPDATE ON workflows
    WHEN NEW.source = 'rest' OR OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS workflows_rest_revision_delete AFTER DELETE ON workflows
    WHEN OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS cli_tools_rest_revision_insert AFTER INSERT ON cli_tools
    WHEN NEW.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS cli_tools_rest_revision_update AFTER UPDATE ON cli_tools
    WHEN NEW.source = 'rest' OR OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS cli_tools_rest_revision_delete AFTER DELETE ON cli_tools
    WHEN OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS security_contexts_rest_revision_insert AFTER INSERT ON security_contexts
    WHEN NEW.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS security_contexts_rest_revision_update AFTER UPDATE ON security_contexts
    WHEN NEW.source = 'rest' OR OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS security_contexts_rest_revision_delete AFTER DELETE ON security_contexts
    WHEN OLD.source = 'rest'
    BEGIN UPDATE catalog_revision SET revision = revision + 1 WHERE id = 1; END;
