-- Full-text fact search: web-search syntax, prefix matching on the last word,
-- ranked and highlighted, filtered and paginated in SQL, with a trigram and
-- then a typo-tolerant fallback.

COMMENT ON FUNCTION deal_store.typo_tsquery(uuid, text, text) IS
    'A tsquery (as text) of the deal''s lexemes within a small edit distance of each query word (Damerau-Levenshtein: 1 for words of 4-5 letters, 2 from 6), or NULL. Used by search_facts when nothing else matches.';

CREATE FUNCTION deal_store.search_config() RETURNS regconfig
LANGUAGE sql STABLE
RETURN coalesce(nullif(current_setting('deal_store.search_config', true), ''), 'english')::regconfig;
COMMENT ON FUNCTION deal_store.search_config() IS
    'The text search configuration searches use: deal_store.search_config, default english.';

CREATE FUNCTION deal_store.headline_options() RETURNS text
LANGUAGE sql STABLE
RETURN format('StartSel="%s", StopSel="%s", MaxWords=35, MinWords=15',
              replace(coalesce(nullif(current_setting('deal_store.headline_start', true), ''), '<b>'), '"', ''),
              replace(coalesce(nullif(current_setting('deal_store.headline_stop', true), ''), '</b>'), '"', ''));
COMMENT ON FUNCTION deal_store.headline_options() IS
    'The ts_headline options searches use: tags from deal_store.headline_start / headline_stop (default <b> and </b>).';

CREATE FUNCTION deal_store.search_tsquery(query text, cfg regconfig DEFAULT NULL) RETURNS tsquery
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    c regconfig := coalesce(cfg, deal_store.search_config());
    q text := btrim(coalesce(query, ''));
    last text := substring(q FROM '(?:^|\s)([[:alnum:]_]+)$');
    head text;
    prefix tsquery;
BEGIN
    -- the last word also matches as a prefix, unless it is inside quotes, excluded or "or"
    IF last IS NULL OR lower(last) = 'or' OR (length(q) - length(replace(q, '"', ''))) % 2 = 1 THEN
        RETURN websearch_to_tsquery(c, q);
    END IF;
    prefix := to_tsquery(c, last || ':*');   -- last is letters and digits only: never a syntax error
    IF numnode(prefix) = 0 THEN
        RETURN websearch_to_tsquery(c, q);   -- a stop word
    END IF;
    head := btrim(left(q, length(q) - length(last)));
    IF head = '' THEN
        RETURN prefix;
    ELSIF head ~* '(^|\s)or$' THEN
        RETURN websearch_to_tsquery(c, regexp_replace(head, '(^|\s)or$', '', 'i')) || prefix;
    END IF;
    RETURN websearch_to_tsquery(c, head) && prefix;
END $$;
COMMENT ON FUNCTION deal_store.search_tsquery(text, regconfig) IS
    'The tsquery search_facts runs: websearch syntax ("phrase", or, -word) with the last word also matching as a prefix. Never raises a syntax error. Composes: SELECT … FROM deal_store.active_facts f WHERE f.search_vector @@ deal_store.search_tsquery(''…'') uses the GIN index on search_vector; order by deal_store.search_rank.';

-- No SET clause, so it is inlined into the caller's query (a plain ts_rank_cd there).
-- A headline shows stored text: it is HTML-escaped first, so that the only tags
-- in it are the highlight markers (an <img onerror> in a fact reaches no UI).
CREATE FUNCTION deal_store_internal._escaped(doc text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(doc, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;');
COMMENT ON FUNCTION deal_store_internal._escaped(text) IS 'Internal: text with & < > " HTML-escaped: what a headline shows of stored text.';
CREATE FUNCTION deal_store_internal._headline(cfg regconfig, doc text, query tsquery, opts text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.ts_headline(cfg, deal_store_internal._escaped(doc), query, opts);
COMMENT ON FUNCTION deal_store_internal._headline(regconfig, text, tsquery, text) IS
    'Internal: ts_headline of the HTML-escaped text (& < > " escaped), so a headline holds no markup but the highlight markers.';

CREATE FUNCTION deal_store.search_rank(search_vector tsvector, query tsquery) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.ts_rank_cd(search_vector, query, 32);
COMMENT ON FUNCTION deal_store.search_rank(tsvector, tsquery) IS
    'The rank search_facts orders full-text matches by, in (0, 1): ts_rank_cd normalised (flag 32). Use it with search_tsquery in a query of your own: WHERE f.search_vector @@ q ORDER BY deal_store.search_rank(f.search_vector, q) DESC.';

CREATE TYPE deal_store.fact_search_hit AS (fact_id uuid, legacy_id text, domain text, category text, item text,
                                           rank real, headline text, total bigint);
COMMENT ON TYPE deal_store.fact_search_hit IS 'One row of search_facts.';

CREATE FUNCTION deal_store.search_facts(deal_id uuid, query text, domain text DEFAULT NULL, category text DEFAULT NULL,
    entity text DEFAULT NULL, min_confidence float8 DEFAULT NULL, lim integer DEFAULT 20, off integer DEFAULT 0)
RETURNS SETOF deal_store.fact_search_hit
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    vec text;
    opts text := deal_store.headline_options();
    trgm text := (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e
                  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm');
    filters text := ' AND f.deal_id = $1 AND f.deleted_at IS NULL AND f.superseded_at IS NULL'
                    ' AND ($3 IS NULL OR f.domain = $3) AND ($4 IS NULL OR f.category = $4)'
                    ' AND ($5 IS NULL OR f.entity = $5) AND ($6 IS NULL OR f.confidence_score >= $6)';
    page text := ' ORDER BY rank DESC, f.legacy_id, f.id LIMIT $7 OFFSET $8';
    typo text;
    tsq_found boolean := false;
    -- the ranked page: %1$s the vector, %2$s the filters, %3$s the page, %4$s added to the rank;
    -- the headline is computed for the returned rows only
    ranked text := 'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item, f.evidence,
                                      (deal_store.search_rank(%1$s, $2) + %4$s)::real AS rank, count(*) OVER () AS total
                               FROM deal_store.facts f WHERE %1$s @@ $2 %2$s %3$s)
                    SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank,
                           CASE WHEN m.evidence IS NULL OR to_tsvector($9, m.item) @@ $2 THEN deal_store_internal._headline($9, m.item, $2, $10)
                                ELSE deal_store_internal._headline($9, m.evidence, $2, $10) END, m.total
                    FROM m ORDER BY m.rank DESC, m.legacy_id, m.id';
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF off IS NULL OR off < 0 THEN
        RAISE EXCEPTION 'off must not be negative' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    ELSIF length(query) > 1000 THEN
        -- pg_trgm's word similarity does not check for cancels: its cost grows with the
        -- query times the item, so the query is bounded (every path then stops in time)
        RAISE EXCEPTION 'a search query has at most 1000 characters, this one has %', length(query) USING ERRCODE = '22023',
            HINT = 'Search for the distinctive words of what you are looking for.';
    END IF;
    -- the stored vector is built with english; another configuration computes it on the fly
    vec := CASE WHEN cfg = 'english'::regconfig THEN 'f.search_vector'
                ELSE format('deal_store.fact_search_vector(%L, f.item, f.category, f.domain, f.evidence, f.details)', cfg) END;
    tsq := deal_store.search_tsquery(query, cfg);
    -- 1. full-text match: rank in (0, 1)
    IF numnode(tsq) > 0 THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '0')
            USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
        IF FOUND THEN
            RETURN;
        END IF;
        -- an empty page past the end of a non-empty result is not a reason to go fuzzy
        IF off > 0 THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM deal_store.facts f WHERE %s @@ $2 %s)', vec, filters)
                INTO STRICT tsq_found USING search_facts.deal_id, tsq, search_facts.domain, search_facts.category,
                     search_facts.entity, min_confidence;
            IF tsq_found THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    -- 2. trigram fallback (pg_trgm word similarity): rank = similarity - 1, so <= 0
    -- @plpgsql_check_options: security_warnings = false
    -- (the EXECUTEd texts are constants of this function; trgm is quote_ident of pg_trgm's schema)
    RETURN QUERY EXECUTE format(
        'WITH m AS (SELECT f.id, f.legacy_id, f.domain, f.category, f.item,
                           (%1$s.word_similarity($2::text, f.item) - 1)::real AS rank, count(*) OVER () AS total
                    FROM deal_store.facts f WHERE $2::text OPERATOR(%1$s.<%%) f.item %2$s %3$s)
         SELECT m.id, m.legacy_id, m.domain, m.category, m.item, m.rank, deal_store_internal._escaped(m.item), m.total
         FROM m ORDER BY m.rank DESC, m.legacy_id, m.id', trgm, filters, page)
        USING search_facts.deal_id, btrim(query), search_facts.domain, search_facts.category, search_facts.entity,
              min_confidence, lim, off;
    IF FOUND THEN
        RETURN;
    END IF;
    -- 3. typo fallback: the deal's lexemes within a small edit distance; rank = ts_rank_cd - 1
    typo := deal_store.typo_tsquery(search_facts.deal_id, query, cfg::text);
    IF typo IS NOT NULL THEN
        RETURN QUERY EXECUTE format(ranked, vec, filters, page, '-1')
            USING search_facts.deal_id, typo::tsquery, search_facts.domain, search_facts.category, search_facts.entity,
                  min_confidence, lim, off, cfg, opts;
    END IF;
END $$;
COMMENT ON FUNCTION deal_store.search_facts(uuid, text, text, text, text, double precision, integer, integer) IS
    'Ranked search over a deal''s current live facts. query: web-search syntax ("quoted phrase", or, -excluded), the last word also matching as a prefix. Filters: domain, category, entity, min_confidence. Ordered by rank then legacy_id and id (stable pages); total = all matches. headline marks the matched words (tags deal_store.headline_start / headline_stop) in the item, or in the evidence when the item has none, the stored text HTML-escaped so the markers are its only tags. rank in (0, 1): full-text match (ts_rank_cd normalised to rank/(rank+1)); rank <= 0: fallback (trigram word similarity - 1, or the typo-tolerant match''s rank - 1). NULL or blank query: no rows. 22023 for lim outside 1..1000, negative off or a query over 1000 characters.';

CREATE FUNCTION deal_store.search_deal(deal_id uuid, query text, lim integer DEFAULT 20)
RETURNS TABLE(entity_type text, entity_id uuid, title text, rank real, headline text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    cfg regconfig := deal_store.search_config();
    tsq tsquery;
    opts text := deal_store.headline_options();
    fact_ids uuid[];
    fact_titles text[];
    fact_ranks real[];
    fact_headlines text[];
BEGIN
    PERFORM deal_store_internal._require_deal(deal_id, 'read');
    IF lim IS NULL OR lim NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'lim must be between 1 and 1000' USING ERRCODE = '22023';
    ELSIF query IS NULL OR btrim(query) = '' THEN
        RETURN;
    END IF;
    tsq := deal_store.search_tsquery(query, cfg);
    IF numnode(tsq) = 0 THEN
        RETURN;
    END IF;
    -- the facts' hits first, in a statement of their own: on Citus the query below runs
    -- on the deal's shard, where search_facts (a query of its own) cannot be called
    SELECT array_agg(s.fact_id), array_agg(s.item), array_agg(s.rank), array_agg(s.headline)
    INTO fact_ids, fact_titles, fact_ranks, fact_headlines
    FROM deal_store.search_facts(search_deal.deal_id, query, lim => search_deal.lim) s WHERE s.rank > 0;
    RETURN QUERY
    WITH hits AS (
        SELECT 'fact'::text AS kind, f.id, f.title, f.rank, f.headline
        FROM ROWS FROM (unnest(fact_ids), unnest(fact_titles), unnest(fact_ranks), unnest(fact_headlines)) f(id, title, rank, headline)
        UNION ALL
        SELECT 'finding', g.id, g.title, ts_rank_cd(v.vec, tsq, 32)::real,
               deal_store_internal._headline(cfg, g.title || coalesce(': ' || g.description, ''), tsq, opts)
        FROM deal_store.findings g,
             LATERAL (SELECT setweight(to_tsvector(cfg, g.title), 'A') || setweight(to_tsvector(cfg, coalesce(g.description, '')), 'C') AS vec) v
        WHERE g.deal_id = search_deal.deal_id AND g.deleted_at IS NULL AND v.vec @@ tsq
        UNION ALL
        SELECT 'gap', x.id, x.description, ts_rank_cd(v.vec, tsq, 32)::real, deal_store_internal._headline(cfg, x.description, tsq, opts)
        FROM deal_store.gaps x,
             LATERAL (SELECT setweight(to_tsvector(cfg, x.description), 'A') AS vec) v
        WHERE x.deal_id = search_deal.deal_id AND x.deleted_at IS NULL AND v.vec @@ tsq)
    SELECT h.kind, h.id, h.title, h.rank, h.headline FROM hits h
    ORDER BY h.rank DESC, h.kind, h.title, h.id
    LIMIT lim;
END $$;
COMMENT ON FUNCTION deal_store.search_deal(uuid, text, integer) IS
    'One ranked list over a deal''s live facts (item, category, evidence, details), findings (title, description) and gaps (description), with highlighted headlines. Same query syntax as search_facts; 22023 for lim outside 1..1000.';
